//! SMPP framing for the SMSC: a sans-IO tokio-util codec that cuts the byte
//! stream into PDUs, decodes each with rusmpp, and encodes the SMSC's answers.
//!
//! The codec checks `command_length` before it allocates anything, and cuts
//! each frame out of the buffer before decoding it, so a body rusmpp cannot
//! read never costs the frame boundary: it becomes an [`Inbound::Invalid`]
//! carrying the header's command id and sequence number, and the session
//! answers `generic_nack` and keeps serving. Only a length that cannot be
//! trusted ends the stream. This module never touches a socket and never
//! logs: PDUs carry message text.

use bytes::{Buf, BufMut, BytesMut};
use rusmpp::decode::{DecodeError, DecodeErrorKind, DecodeWithLength};
use rusmpp::encode::{owned::Encode, Length};
use rusmpp::fields::SmppField;
use rusmpp::{Command, CommandId, CommandStatus, Pdu};
use tokio_util::codec::{Decoder, Encoder};

/// Every PDU starts with a 16-octet header: length, id, status, sequence.
pub const HEADER_LEN: usize = 16;
/// The largest PDU accepted unless configured otherwise. A submit_sm with a
/// full `message_payload` fits easily; anything bigger is a broken peer.
pub const DEFAULT_MAX_PDU_LEN: usize = 64 * 1024;

/// What the codec makes of one frame.
#[derive(Debug)]
pub enum Inbound {
    /// A PDU rusmpp decoded. Response PDUs that arrive without their body
    /// (some ESMEs send a header-only `deliver_sm_resp`), or with one that
    /// cannot be read, come through as a command without a PDU; their id,
    /// status and sequence still count.
    Command(Box<Command>),
    /// A request frame whose boundary is sound but whose content is not:
    /// the session answers it with `answer_id` and `status`.
    Invalid(InvalidPdu),
}

/// A frame the SMSC cannot act on, with what its answer needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidPdu {
    pub command_id: u32,
    pub sequence_number: u32,
    pub status: CommandStatus,
    /// The answer's command id: `generic_nack` for a header the SMSC
    /// cannot act on (an unknown command id, a bad length: SMPP 3.4
    /// section 4.3.1), else the response of the operation whose body was
    /// unreadable, header only, as an error response is sent.
    pub answer_id: u32,
    /// For the log; never contains message text.
    pub reason: String,
}

/// Errors after which the byte stream cannot be read any further.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// `command_length` is below the header size or above the limit, so the
    /// next frame's start is unknown. The session answers `generic_nack`
    /// with ESME_RINVCMDLEN and closes.
    #[error("command_length {length} is outside 16..={max}")]
    BadLength {
        command_id: u32,
        sequence_number: u32,
        length: u32,
        max: usize,
    },
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// What the SMSC sends.
#[derive(Debug)]
pub enum Outbound {
    /// A full PDU.
    Command(Box<Command>),
    /// A header with no body: `generic_nack`, and the error answers to
    /// requests, whose bodies SMPP 3.4 says are not returned on error.
    Bare {
        command_id: u32,
        status: CommandStatus,
        sequence_number: u32,
    },
}

impl Outbound {
    pub fn generic_nack(status: CommandStatus, sequence_number: u32) -> Outbound {
        Outbound::Bare {
            command_id: u32::from(CommandId::GenericNack),
            status,
            sequence_number,
        }
    }

    pub fn command(sequence_number: u32, pdu: impl Into<Pdu>) -> Outbound {
        Outbound::Command(Box::new(Command::new(CommandStatus::EsmeRok, sequence_number, pdu)))
    }
}

/// The SMSC side of SMPP framing.
#[derive(Debug)]
pub struct SmppCodec {
    max_len: usize,
}

impl SmppCodec {
    pub fn new(max_len: usize) -> SmppCodec {
        SmppCodec {
            max_len: max_len.max(HEADER_LEN),
        }
    }
}

impl Default for SmppCodec {
    fn default() -> Self {
        SmppCodec::new(DEFAULT_MAX_PDU_LEN)
    }
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_be_bytes(word)
}

impl Decoder for SmppCodec {
    type Item = Inbound;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Inbound>, CodecError> {
        if src.len() < HEADER_LEN {
            return Ok(None);
        }
        let length = be_u32(src, 0);
        let command_id = be_u32(src, 4);
        let command_status = be_u32(src, 8);
        let sequence_number = be_u32(src, 12);
        let frame_len = length as usize;
        if frame_len < HEADER_LEN || frame_len > self.max_len {
            return Err(CodecError::BadLength {
                command_id,
                sequence_number,
                length,
                max: self.max_len,
            });
        }
        if src.len() < frame_len {
            src.reserve(frame_len - src.len());
            return Ok(None);
        }
        let mut frame = src.split_to(frame_len);
        frame.advance(4);
        let invalid_answered_by = |answer_id: CommandId, status: CommandStatus, reason: String| {
            Ok(Some(Inbound::Invalid(InvalidPdu {
                command_id,
                sequence_number,
                status,
                answer_id: u32::from(answer_id),
                reason,
            })))
        };
        let invalid = |status, reason| invalid_answered_by(CommandId::GenericNack, status, reason);
        let command = match Command::decode(&mut frame, frame_len - 4) {
            Ok((command, _)) => command,
            // SMPP answers no response: one whose body cannot be read
            // still settles its request by its header's status.
            Err(_) if CommandId::from(command_id).is_response() => {
                header_only(command_id, command_status, sequence_number)?
            }
            Err(error) => {
                let answer_id = response_to(CommandId::from(command_id)).unwrap_or(CommandId::GenericNack);
                return invalid_answered_by(answer_id, status_for(&error), format!("undecodable body: {error}"));
            }
        };
        match command.pdu() {
            Some(Pdu::Other { .. }) => invalid(CommandStatus::EsmeRinvcmdid, "unknown command id".into()),
            Some(_) => Ok(Some(Inbound::Command(Box::new(command)))),
            None => match command.id() {
                CommandId::Other(_) => invalid(CommandStatus::EsmeRinvcmdid, "unknown command id".into()),
                id if id.is_response() || has_no_body(id) => Ok(Some(Inbound::Command(Box::new(command)))),
                _ => invalid(CommandStatus::EsmeRinvcmdlen, "request without its body".into()),
            },
        }
    }
}

/// A response's header alone, as a command without a PDU (as a header-only
/// `deliver_sm_resp` decodes).
fn header_only(command_id: u32, command_status: u32, sequence_number: u32) -> Result<Command, CodecError> {
    let mut header = BytesMut::with_capacity(HEADER_LEN - 4);
    for word in [command_id, command_status, sequence_number] {
        header.extend_from_slice(&word.to_be_bytes());
    }
    Command::decode(&mut header, HEADER_LEN - 4)
        .map(|(command, _)| command)
        .map_err(|e| CodecError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())))
}

/// The response to an operation the SMSC serves (those an ESME sends it).
fn response_to(request: CommandId) -> Option<CommandId> {
    Some(match request {
        CommandId::BindTransmitter => CommandId::BindTransmitterResp,
        CommandId::BindReceiver => CommandId::BindReceiverResp,
        CommandId::BindTransceiver => CommandId::BindTransceiverResp,
        CommandId::SubmitSm => CommandId::SubmitSmResp,
        CommandId::DataSm => CommandId::DataSmResp,
        CommandId::SubmitMulti => CommandId::SubmitMultiResp,
        CommandId::QuerySm => CommandId::QuerySmResp,
        CommandId::CancelSm => CommandId::CancelSmResp,
        CommandId::ReplaceSm => CommandId::ReplaceSmResp,
        _ => return None,
    })
}

/// Requests whose PDU is the header alone.
fn has_no_body(id: CommandId) -> bool {
    matches!(id, CommandId::Unbind | CommandId::EnquireLink)
}

/// The `generic_nack` status for a body rusmpp could not decode: the field
/// at fault picks the status where SMPP has one for it.
fn status_for(error: &DecodeError) -> CommandStatus {
    let fields = [
        (SmppField::source_addr, CommandStatus::EsmeRinvsrcadr),
        (SmppField::destination_addr, CommandStatus::EsmeRinvdstadr),
        (SmppField::system_id, CommandStatus::EsmeRinvsysid),
        (SmppField::password, CommandStatus::EsmeRinvpaswd),
        (SmppField::validity_period, CommandStatus::EsmeRinvexpiry),
        (SmppField::schedule_delivery_time, CommandStatus::EsmeRinvsched),
        (SmppField::message_id, CommandStatus::EsmeRinvmsgid),
        (SmppField::short_message, CommandStatus::EsmeRinvmsglen),
        (SmppField::sm_length, CommandStatus::EsmeRinvmsglen),
        (SmppField::tlvs, CommandStatus::EsmeRinvtlvstream),
    ];
    for (field, status) in fields {
        if error.field_exists(field) {
            return status;
        }
    }
    match error.kind() {
        DecodeErrorKind::UnexpectedEof => CommandStatus::EsmeRinvcmdlen,
        _ => CommandStatus::EsmeRinvmsglen,
    }
}

impl Encoder<Outbound> for SmppCodec {
    type Error = CodecError;

    fn encode(&mut self, item: Outbound, dst: &mut BytesMut) -> Result<(), CodecError> {
        match item {
            Outbound::Command(command) => {
                // Encoded here rather than by rusmpp's codec, whose debug log
                // would print the PDU, receipt text included.
                let length = 4 + command.length();
                let length_word = u32::try_from(length)
                    .map_err(|_| CodecError::Io(std::io::Error::other("PDU too long to encode")))?;
                dst.reserve(length);
                dst.put_u32(length_word);
                command.encode(dst);
                Ok(())
            }
            Outbound::Bare {
                command_id,
                status,
                sequence_number,
            } => {
                dst.reserve(HEADER_LEN);
                dst.put_u32(HEADER_LEN as u32);
                dst.put_u32(command_id);
                dst.put_u32(u32::from(status));
                dst.put_u32(sequence_number);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusmpp::pdus::BindTransceiverResp;
    use rusmpp::types::COctetString;
    use rusmpp::values::InterfaceVersion;
    use std::str::FromStr;

    fn decode_all(bytes: &[u8]) -> Vec<Result<Inbound, String>> {
        let mut codec = SmppCodec::new(1024);
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(item)) => out.push(Ok(item)),
                Ok(None) => break,
                Err(e) => {
                    out.push(Err(e.to_string()));
                    break;
                }
            }
        }
        out
    }

    fn encode(item: Outbound) -> Vec<u8> {
        let mut buf = BytesMut::new();
        SmppCodec::default().encode(item, &mut buf).unwrap();
        buf.to_vec()
    }

    fn pdu(command_id: u32, sequence: u32, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((16 + body.len()) as u32).to_be_bytes());
        out.extend_from_slice(&command_id.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&sequence.to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn invalid(item: &Result<Inbound, String>) -> Option<(u32, u32, CommandStatus)> {
        match item {
            Ok(Inbound::Invalid(i)) => Some((i.command_id, i.sequence_number, i.status)),
            _ => None,
        }
    }

    fn answer_id(item: &Result<Inbound, String>) -> Option<u32> {
        match item {
            Ok(Inbound::Invalid(i)) => Some(i.answer_id),
            _ => None,
        }
    }

    #[test]
    fn bind_resp_bytes() {
        let resp = BindTransceiverResp::new(
            COctetString::from_str("otpgate").unwrap(),
            Some(InterfaceVersion::Smpp3_4),
        );
        let bytes = encode(Outbound::command(7, resp));
        let expected: &[u8] = &[
            0x00, 0x00, 0x00, 0x1D, // command_length 29
            0x80, 0x00, 0x00, 0x09, // bind_transceiver_resp
            0x00, 0x00, 0x00, 0x00, // ESME_ROK
            0x00, 0x00, 0x00, 0x07, // sequence 7
            b'o', b't', b'p', b'g', b'a', b't', b'e', 0x00, // system_id
            0x02, 0x10, 0x00, 0x01, 0x34, // sc_interface_version 3.4
        ];
        assert_eq!(bytes, expected);
    }

    #[test]
    fn generic_nack_bytes() {
        let bytes = encode(Outbound::generic_nack(CommandStatus::EsmeRinvcmdid, 1));
        let expected: &[u8] = &[
            0x00, 0x00, 0x00, 0x10, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x01,
        ];
        assert_eq!(bytes, expected);
    }

    #[test]
    fn unknown_command_is_invalid_and_the_next_frame_still_decodes() {
        let mut bytes = pdu(0x1234_5678, 1, &[]);
        bytes.extend(pdu(0x1234_5678, 2, b"junk"));
        bytes.extend(pdu(0x0000_0015, 3, &[])); // enquire_link
        let items = decode_all(&bytes);
        assert_eq!(items.len(), 3);
        assert_eq!(invalid(&items[0]), Some((0x1234_5678, 1, CommandStatus::EsmeRinvcmdid)));
        assert_eq!(invalid(&items[1]), Some((0x1234_5678, 2, CommandStatus::EsmeRinvcmdid)));
        match &items[2] {
            Ok(Inbound::Command(c)) => {
                assert_eq!(c.id(), CommandId::EnquireLink);
                assert_eq!(c.sequence_number(), 3);
            }
            other => panic!("expected enquire_link, got {other:?}"),
        }
    }

    #[test]
    fn absurd_lengths_end_the_stream_before_allocating() {
        let mut short = pdu(0x15, 9, &[]);
        short[3] = 8;
        let items = decode_all(&short);
        assert!(matches!(&items[0], Err(e) if e.contains("command_length 8")));

        let mut huge = pdu(0x04, 9, &[]);
        huge[..4].copy_from_slice(&0xFFFF_FFF0u32.to_be_bytes());
        let mut codec = SmppCodec::new(1024);
        let mut buf = BytesMut::from(&huge[..]);
        match codec.decode(&mut buf) {
            Err(CodecError::BadLength {
                command_id,
                sequence_number,
                ..
            }) => assert_eq!((command_id, sequence_number), (4, 9)),
            other => panic!("expected BadLength, got {other:?}"),
        }
        assert!(buf.capacity() < 4096, "the codec reserved room for a huge frame");
    }

    #[test]
    fn undecodable_bodies_get_field_statuses() {
        // bind_transmitter whose system_id has no terminator within the frame.
        let items = decode_all(&pdu(0x02, 5, b"abc"));
        let (id, seq, status) = invalid(&items[0]).unwrap();
        assert_eq!((id, seq), (2, 5));
        assert_ne!(status, CommandStatus::EsmeRok);
        assert_eq!(answer_id(&items[0]), Some(0x8000_0002), "bind_transmitter_resp");
        // submit_sm with a 30-character destination address.
        let mut body = vec![0u8, 1, 1];
        body.extend_from_slice(b"0354600124\0");
        body.extend_from_slice(&[1, 1]);
        body.extend_from_slice(&[b'8'; 30]);
        body.push(0);
        body.extend_from_slice(&[0, 0, 0, 0, 0, 1, 0, 0, 0, 0]);
        let items = decode_all(&pdu(0x04, 6, &body));
        assert_eq!(invalid(&items[0]), Some((4, 6, CommandStatus::EsmeRinvdstadr)));
        assert_eq!(answer_id(&items[0]), Some(0x8000_0004), "submit_sm_resp");
        // A bind with no body at all: a bad length, so generic_nack.
        let items = decode_all(&pdu(0x09, 8, &[]));
        assert_eq!(invalid(&items[0]), Some((9, 8, CommandStatus::EsmeRinvcmdlen)));
        assert_eq!(answer_id(&items[0]), Some(0x8000_0000));
        // A deliver_sm is not the ESME's to send: its body unread, generic_nack.
        let items = decode_all(&pdu(0x05, 9, b"abc"));
        assert_eq!(answer_id(&items[0]), Some(0x8000_0000));
    }

    #[test]
    fn a_response_whose_body_cannot_be_read_counts_by_its_header() {
        // deliver_sm_resp whose message_id never ends, status ESME_RX_T_APPN.
        let mut bytes = pdu(0x8000_0005, 12, b"abc");
        bytes[8..12].copy_from_slice(&0x64u32.to_be_bytes());
        let items = decode_all(&bytes);
        match &items[0] {
            Ok(Inbound::Command(c)) => {
                assert_eq!(c.id(), CommandId::DeliverSmResp);
                assert_eq!((c.sequence_number(), c.status()), (12, CommandStatus::EsmeRxTAppn));
                assert!(c.pdu().is_none());
            }
            other => panic!("expected deliver_sm_resp, got {other:?}"),
        }
    }

    #[test]
    fn header_only_deliver_sm_resp_is_accepted() {
        let items = decode_all(&pdu(0x8000_0005, 11, &[]));
        match &items[0] {
            Ok(Inbound::Command(c)) => {
                assert_eq!(c.id(), CommandId::DeliverSmResp);
                assert!(c.pdu().is_none());
            }
            other => panic!("expected deliver_sm_resp, got {other:?}"),
        }
    }

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let bytes = pdu(0x15, 1, &[]);
        let mut codec = SmppCodec::default();
        let mut buf = BytesMut::from(&bytes[..10]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(&bytes[10..]);
        assert!(matches!(codec.decode(&mut buf).unwrap(), Some(Inbound::Command(_))));
    }
}

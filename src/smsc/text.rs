//! How SMS text travels as octets: the GSM 03.38 default alphabet (with its
//! escape extension), IA5, Latin-1 and UCS-2, the user data header that
//! chains the parts of a long message, and the split of a long text into
//! parts. Both sides of otpgate's SMPP link use these functions: the SMSC to
//! decode and reassemble what an ESME submits, otpgate's own client to encode
//! and split what it sends.
//!
//! Everything here is pure: no I/O, no clock, no logging (the text can hold
//! an OTP code, so this module must never log or store it).

use std::fmt;

/// `data_coding` 0: the SMSC default alphabet, which here is GSM 03.38,
/// carried unpacked (one septet per octet) as SMPP does.
pub const DCS_GSM7: u8 = 0x00;
/// `data_coding` 1: IA5 / ASCII.
pub const DCS_IA5: u8 = 0x01;
/// `data_coding` 3: ISO-8859-1.
pub const DCS_LATIN1: u8 = 0x03;
/// `data_coding` 8: UCS-2, big-endian (UTF-16 in practice: surrogate pairs
/// carry characters outside the basic plane).
pub const DCS_UCS2: u8 = 0x08;

/// `esm_class` bit that says the short message starts with a user data header.
pub const ESM_UDHI: u8 = 0x40;

/// Septets in a single GSM-7 message and in each part of a long one (the
/// 6-octet concatenation header takes the room of 7 septets).
pub const GSM7_SINGLE: usize = 160;
pub const GSM7_PART: usize = 153;
/// UCS-2 code units in a single message and in each part of a long one.
pub const UCS2_SINGLE: usize = 70;
pub const UCS2_PART: usize = 67;
/// The most parts a concatenated message can have (the part counter is one octet).
pub const MAX_PARTS: usize = 255;

const ESC: u8 = 0x1B;

/// The GSM 03.38 default alphabet, indexed by septet. 0x1B is the escape to
/// the extension table; it has no character of its own.
const GSM_BASIC: [char; 128] = [
    '@', '£', '$', '¥', 'è', 'é', 'ù', 'ì', 'ò', 'Ç', '\n', 'Ø', 'ø', '\r', 'Å', 'å', //
    'Δ', '_', 'Φ', 'Γ', 'Λ', 'Ω', 'Π', 'Ψ', 'Σ', 'Θ', 'Ξ', '\u{1B}', 'Æ', 'æ', 'ß', 'É', //
    ' ', '!', '"', '#', '¤', '%', '&', '\'', '(', ')', '*', '+', ',', '-', '.', '/', //
    '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', ':', ';', '<', '=', '>', '?', //
    '¡', 'A', 'B', 'C', 'D', 'E', 'F', 'G', 'H', 'I', 'J', 'K', 'L', 'M', 'N', 'O', //
    'P', 'Q', 'R', 'S', 'T', 'U', 'V', 'W', 'X', 'Y', 'Z', 'Ä', 'Ö', 'Ñ', 'Ü', '§', //
    '¿', 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k', 'l', 'm', 'n', 'o', //
    'p', 'q', 'r', 's', 't', 'u', 'v', 'w', 'x', 'y', 'z', 'ä', 'ö', 'ñ', 'ü', 'à', //
];

/// The GSM 03.38 extension table: the septet that follows an escape, and
/// the character it stands for.
const GSM_EXTENSION: [(u8, char); 10] = [
    (0x0A, '\u{0C}'),
    (0x14, '^'),
    (0x28, '{'),
    (0x29, '}'),
    (0x2F, '\\'),
    (0x3C, '['),
    (0x3D, '~'),
    (0x3E, ']'),
    (0x40, '|'),
    (0x65, '€'),
];

/// Septets for one character in the GSM default alphabet: one for the basic
/// table, two (escape + code) for the extension table, none if it has no place.
fn gsm7_septets(c: char) -> Option<([u8; 2], usize)> {
    if c != '\u{1B}' {
        if let Some(code) = GSM_BASIC.iter().position(|&b| b == c) {
            return Some(([code as u8, 0], 1));
        }
    }
    GSM_EXTENSION
        .iter()
        .find(|(_, e)| *e == c)
        .map(|(code, _)| ([ESC, *code], 2))
}

/// Whether every character of `text` has a place in the GSM default alphabet.
pub fn fits_gsm7(text: &str) -> bool {
    text.chars().all(|c| gsm7_septets(c).is_some())
}

/// Encodes `text` as unpacked GSM-7 septets, or `None` if a character has no
/// place in the alphabet.
pub fn gsm7_encode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        let (septets, n) = gsm7_septets(c)?;
        out.extend_from_slice(&septets[..n]);
    }
    Some(out)
}

/// Decodes unpacked GSM-7 septets. The high bit of each octet is ignored; an
/// escape followed by a code the extension table lacks shows the basic
/// character, as GSM 03.38 asks; a trailing escape is dropped.
pub fn gsm7_decode(octets: &[u8]) -> String {
    let mut out = String::with_capacity(octets.len());
    let mut iter = octets.iter().map(|b| b & 0x7F);
    while let Some(septet) = iter.next() {
        if septet == ESC {
            match iter.next() {
                Some(code) => match GSM_EXTENSION.iter().find(|(c, _)| *c == code) {
                    Some((_, ch)) => out.push(*ch),
                    None => out.push(basic_char(code)),
                },
                None => break,
            }
        } else {
            out.push(basic_char(septet));
        }
    }
    out
}

fn basic_char(septet: u8) -> char {
    match GSM_BASIC.get(usize::from(septet)) {
        Some('\u{1B}') | None => ' ',
        Some(c) => *c,
    }
}

/// Encodes as UCS-2 big-endian (UTF-16BE: characters beyond the basic plane
/// become surrogate pairs).
pub fn ucs2_encode(text: &str) -> Vec<u8> {
    text.encode_utf16().flat_map(u16::to_be_bytes).collect()
}

/// Decodes UCS-2 / UTF-16 big-endian. A lone surrogate becomes U+FFFD and an
/// odd trailing octet is dropped.
pub fn ucs2_decode(octets: &[u8]) -> String {
    let units = octets
        .chunks_exact(2)
        .map(|pair| u16::from_be_bytes([pair[0], pair[1]]));
    char::decode_utf16(units)
        .map(|r| r.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect()
}

/// Decodes ISO-8859-1: every octet is the code point of the same number.
pub fn latin1_decode(octets: &[u8]) -> String {
    octets.iter().map(|&b| char::from(b)).collect()
}

/// Decodes a short message's octets according to its `data_coding`.
///
/// 0 is GSM-7, 1 IA5 (octets above 0x7F are read as Latin-1 rather than
/// refused: many ESMEs send Latin-1 under 1), 3 Latin-1, 8 UCS-2. Of the GSM
/// data coding groups, 0x10-0x3F and 0xF0-0xFF pick the alphabet from their
/// own bits. Anything else (binary, JIS, ...) is read as Latin-1 so that no
/// octet is lost.
pub fn decode(data_coding: u8, octets: &[u8]) -> String {
    match alphabet(data_coding) {
        Alphabet::Gsm7 => gsm7_decode(octets),
        Alphabet::Ucs2 => ucs2_decode(octets),
        Alphabet::Octets => latin1_decode(octets),
    }
}

enum Alphabet {
    Gsm7,
    Octets,
    Ucs2,
}

fn alphabet(data_coding: u8) -> Alphabet {
    match data_coding {
        DCS_GSM7 => Alphabet::Gsm7,
        DCS_UCS2 => Alphabet::Ucs2,
        // General data coding groups (00xx): bits 3-2 pick the alphabet.
        0x10..=0x3F => match (data_coding >> 2) & 0x03 {
            0 => Alphabet::Gsm7,
            2 => Alphabet::Ucs2,
            _ => Alphabet::Octets,
        },
        // Message waiting groups: GSM-7 (0xC0-0xDF) and UCS-2 (0xE0-0xEF).
        0xC0..=0xDF => Alphabet::Gsm7,
        0xE0..=0xEF => Alphabet::Ucs2,
        // Data coding / message class group: bit 2 chooses 8-bit data.
        0xF0..=0xFF if data_coding & 0x04 == 0 => Alphabet::Gsm7,
        _ => Alphabet::Octets,
    }
}

/// The concatenation element of a user data header: which long message a
/// part belongs to, how many parts it has and which one this is (from 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Concat {
    /// The message reference; 8-bit references (IEI 0x00) are widened.
    pub reference: u16,
    pub total: u8,
    pub seq: u8,
}

/// Why a user data header could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UdhError {
    /// The header length octet points past the end of the short message.
    Truncated,
    /// An information element runs past the end of the header.
    BadElement,
    /// A concatenation element numbers its parts impossibly (0, or seq > total).
    BadConcat,
}

impl fmt::Display for UdhError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UdhError::Truncated => f.write_str("user data header longer than the message"),
            UdhError::BadElement => f.write_str("malformed user data header element"),
            UdhError::BadConcat => f.write_str("impossible concatenation numbering"),
        }
    }
}

impl std::error::Error for UdhError {}

/// Splits a short message that starts with a user data header into the
/// concatenation element (if the header has one) and the user data after
/// the header. Other elements (ports, national language shifts) are skipped.
pub fn split_udh(short_message: &[u8]) -> Result<(Option<Concat>, &[u8]), UdhError> {
    let (&udhl, rest) = short_message.split_first().ok_or(UdhError::Truncated)?;
    let udhl = usize::from(udhl);
    if rest.len() < udhl {
        return Err(UdhError::Truncated);
    }
    let (mut header, data) = rest.split_at(udhl);
    let mut concat = None;
    while !header.is_empty() {
        let [iei, len, tail @ ..] = header else {
            return Err(UdhError::BadElement);
        };
        let len = usize::from(*len);
        if tail.len() < len {
            return Err(UdhError::BadElement);
        }
        let (value, next) = tail.split_at(len);
        match (iei, value) {
            (0x00, [reference, total, seq]) => {
                concat = Some(concat_of(u16::from(*reference), *total, *seq)?);
            }
            (0x08, [hi, lo, total, seq]) => {
                concat = Some(concat_of(u16::from_be_bytes([*hi, *lo]), *total, *seq)?);
            }
            _ => {}
        }
        header = next;
    }
    Ok((concat, data))
}

fn concat_of(reference: u16, total: u8, seq: u8) -> Result<Concat, UdhError> {
    if total == 0 || seq == 0 || seq > total {
        return Err(UdhError::BadConcat);
    }
    Ok(Concat { reference, total, seq })
}

/// The 6-octet user data header for part `seq` of `total` with an 8-bit
/// reference (IEI 0x00), followed by the part's user data.
pub fn with_udh(reference: u8, total: u8, seq: u8, user_data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(6 + user_data.len());
    out.extend_from_slice(&[0x05, 0x00, 0x03, reference, total, seq]);
    out.extend_from_slice(user_data);
    out
}

/// A text ready for `submit_sm`: its `data_coding` and the user data of each
/// part, without headers (one part when it fits a single message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedText {
    pub data_coding: u8,
    pub parts: Vec<Vec<u8>>,
}

/// Why a text cannot be sent as SMS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextError {
    /// It needs more than 255 parts.
    TooLong { parts: usize },
}

impl fmt::Display for TextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TextError::TooLong { parts } => {
                write!(f, "text needs {parts} parts, more than {MAX_PARTS}")
            }
        }
    }
}

impl std::error::Error for TextError {}

/// Encodes `text` in GSM-7 when every character fits the default alphabet,
/// else in UCS-2, and splits it into parts when it is too long for one
/// message: 160 septets or 70 UCS-2 units fit one message; a long text goes
/// in parts of at most 153 septets or 67 units. An escape sequence or a
/// surrogate pair is never split across parts.
pub fn encode_for_sms(text: &str) -> Result<EncodedText, TextError> {
    let encoded = match gsm7_encode(text) {
        Some(septets) => {
            let units = text.chars().map(|c| gsm7_septets(c).map_or(1, |(_, n)| n));
            EncodedText {
                data_coding: DCS_GSM7,
                parts: split_units(&septets, units, GSM7_SINGLE, GSM7_PART, 1),
            }
        }
        None => {
            let octets = ucs2_encode(text);
            let units = text.chars().map(char::len_utf16);
            EncodedText {
                data_coding: DCS_UCS2,
                parts: split_units(&octets, units, UCS2_SINGLE, UCS2_PART, 2),
            }
        }
    };
    if encoded.parts.len() > MAX_PARTS {
        return Err(TextError::TooLong {
            parts: encoded.parts.len(),
        });
    }
    Ok(encoded)
}

/// Cuts `octets` into parts at character boundaries. `units` gives the size
/// of each character in units (septets or UTF-16 code units), each unit
/// being `octets_per_unit` octets.
fn split_units(
    octets: &[u8],
    units: impl Iterator<Item = usize>,
    single: usize,
    per_part: usize,
    octets_per_unit: usize,
) -> Vec<Vec<u8>> {
    if octets.len() <= single * octets_per_unit {
        return vec![octets.to_vec()];
    }
    let mut parts = Vec::new();
    let (mut start, mut end, mut in_part) = (0usize, 0usize, 0usize);
    for n in units {
        if in_part + n > per_part {
            parts.push(octets[start..end].to_vec());
            start = end;
            in_part = 0;
        }
        end += n * octets_per_unit;
        in_part += n;
    }
    if end > start {
        parts.push(octets[start..end].to_vec());
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_round_trip(text: &str, data_coding: u8) {
        let encoded = encode_for_sms(text).expect("encodable");
        assert_eq!(encoded.data_coding, data_coding, "coding of {text:?}");
        let whole: Vec<u8> = encoded.parts.concat();
        assert_eq!(decode(encoded.data_coding, &whole), text);
    }

    #[test]
    fn round_trips_in_the_right_alphabet() {
        check_round_trip("Your code is 482913", DCS_GSM7);
        check_round_trip("@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./", DCS_GSM7);
        check_round_trip("¡ÄÖÑÜ§¿äöñüà {}[]~^|\\€\u{0C}", DCS_GSM7);
        check_round_trip("認証コードは482913です", DCS_UCS2);
        check_round_trip("emoji 😀 outside the basic plane", DCS_UCS2);
    }

    #[test]
    fn escape_table_uses_two_septets() {
        assert_eq!(gsm7_encode("€[]").unwrap(), vec![0x1B, 0x65, 0x1B, 0x3C, 0x1B, 0x3E]);
        assert_eq!(gsm7_encode("@A").unwrap(), vec![0x00, 0x41]);
        // An unknown extension code shows the basic character; a trailing escape is dropped.
        assert_eq!(gsm7_decode(&[0x1B, 0x41, 0x42, 0x1B]), "AB");
        assert_eq!(gsm7_encode("日本"), None);
        assert!(!fits_gsm7("`"));
    }

    #[test]
    fn decodes_each_data_coding() {
        assert_eq!(decode(DCS_IA5, b"code 1234"), "code 1234");
        assert_eq!(decode(DCS_LATIN1, &[0x63, 0xE9]), "cé");
        assert_eq!(decode(DCS_UCS2, &[0x30, 0x42, 0xD8, 0x3D, 0xDE, 0x00]), "あ😀");
        assert_eq!(decode(DCS_UCS2, &[0xD8, 0x3D, 0x00, 0x41]), "\u{FFFD}A");
        assert_eq!(decode(0xF0, b"Hi"), "Hi");
        assert_eq!(decode(0x18, &[0x00, 0x41]), "A");
    }

    #[test]
    fn short_texts_are_one_part() {
        assert_eq!(encode_for_sms(&"a".repeat(160)).unwrap().parts.len(), 1);
        assert_eq!(encode_for_sms(&"あ".repeat(70)).unwrap().parts.len(), 1);
        assert_eq!(encode_for_sms(&"a".repeat(161)).unwrap().parts.len(), 2);
        assert_eq!(encode_for_sms(&"あ".repeat(71)).unwrap().parts.len(), 2);
    }

    #[test]
    fn long_gsm_text_never_splits_an_escape() {
        let text = format!("{}€tail-tail!", "a".repeat(152));
        let encoded = encode_for_sms(&text).unwrap();
        assert_eq!(encoded.parts[0].len(), 152);
        assert_eq!(encoded.parts[1][..2], [0x1B, 0x65]);
        assert_eq!(decode(DCS_GSM7, &encoded.parts.concat()), text);
    }

    #[test]
    fn japanese_200_chars_split_into_67_char_parts_and_reassemble() {
        let text: String = "ワンタイムパスワードのお知らせ。".chars().cycle().take(200).collect();
        let encoded = encode_for_sms(&text).unwrap();
        assert_eq!(encoded.data_coding, DCS_UCS2);
        let sizes: Vec<usize> = encoded.parts.iter().map(|p| p.len() / 2).collect();
        assert_eq!(sizes, vec![67, 67, 66]);
        // Through the wire format and back: headers on, headers off, in any order.
        let total = encoded.parts.len() as u8;
        let mut wire: Vec<Vec<u8>> = encoded
            .parts
            .iter()
            .enumerate()
            .map(|(i, p)| with_udh(42, total, i as u8 + 1, p))
            .collect();
        wire.reverse();
        let mut parts: Vec<(Concat, Vec<u8>)> = wire
            .iter()
            .map(|sm| {
                let (concat, data) = split_udh(sm).unwrap();
                (concat.unwrap(), data.to_vec())
            })
            .collect();
        parts.sort_by_key(|(c, _)| c.seq);
        assert!(parts.iter().all(|(c, _)| c.reference == 42 && c.total == 3));
        let whole: Vec<u8> = parts.into_iter().flat_map(|(_, d)| d).collect();
        assert_eq!(decode(DCS_UCS2, &whole), text);
    }

    #[test]
    fn surrogate_pairs_stay_whole() {
        let text = format!("{}😀", "あ".repeat(66));
        let text = format!("{text}{text}");
        let encoded = encode_for_sms(&text).unwrap();
        assert_eq!(encoded.parts[0].len(), 132);
        assert_eq!(decode(DCS_UCS2, &encoded.parts.concat()), text);
    }

    #[test]
    fn reads_both_concatenation_headers() {
        let eight = [0x05, 0x00, 0x03, 0x07, 0x02, 0x01, b'h', b'i'];
        assert_eq!(
            split_udh(&eight).unwrap(),
            (
                Some(Concat {
                    reference: 7,
                    total: 2,
                    seq: 1
                }),
                &b"hi"[..]
            )
        );
        let sixteen = [0x06, 0x08, 0x04, 0x12, 0x34, 0x03, 0x03, b'x'];
        assert_eq!(
            split_udh(&sixteen).unwrap(),
            (
                Some(Concat {
                    reference: 0x1234,
                    total: 3,
                    seq: 3
                }),
                &b"x"[..]
            )
        );
        // A port element alone is no concatenation.
        assert_eq!(
            split_udh(&[0x04, 0x04, 0x02, 0x0B, 0x84, b'z']).unwrap(),
            (None, &b"z"[..])
        );
        assert_eq!(split_udh(&[0x09, 0x00]), Err(UdhError::Truncated));
        assert_eq!(split_udh(&[0x03, 0x00, 0x03, 0x01]), Err(UdhError::BadElement));
        assert_eq!(
            split_udh(&[0x05, 0x00, 0x03, 0x01, 0x02, 0x03]),
            Err(UdhError::BadConcat)
        );
        assert_eq!(split_udh(&[]), Err(UdhError::Truncated));
    }

    #[test]
    fn too_long_is_refused() {
        let text = "a".repeat(153 * 255 + 1);
        assert_eq!(encode_for_sms(&text), Err(TextError::TooLong { parts: 256 }));
    }
}

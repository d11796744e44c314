//! A captured mail's attachments and inline images, read from its raw
//! source when someone asks for them: the capture's hot path stores only
//! their names, and a part's bytes are already in the source.
//!
//! A part is numbered by its place among mail-parser's attachments, which
//! the same source always gives in the same order. Everything here is pure:
//! bytes in, views out; a source mail-parser cannot read has no parts.

use mail_parser::{Message, MessageParser, MimeHeaders};
use serde::{Deserialize, Serialize};

/// One attachment or inline part: `GET /v1/mail/{id}` lists them,
/// `GET /v1/mail/{id}/parts/{index}` downloads one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailPart {
    /// Its place among the mail's parts, from 0.
    pub index: usize,
    /// The file name its sender gave, if any.
    pub name: Option<String>,
    /// `type/subtype`, as far as it is a well-formed token pair;
    /// `application/octet-stream` otherwise.
    pub content_type: String,
    /// Decoded bytes.
    pub size: usize,
    /// The `Content-ID`, without angle brackets: the HTML names an inline
    /// image by it (`cid:`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub content_id: Option<String>,
    /// `Content-Disposition: inline`.
    pub inline: bool,
}

/// The parts of a raw mail, in order.
pub fn list(raw: &[u8]) -> Vec<MailPart> {
    with_parts(raw, |parts| parts.map(|(part, _)| part).collect()).unwrap_or_default()
}

/// One part and its decoded bytes.
pub fn get(raw: &[u8], index: usize) -> Option<(MailPart, Vec<u8>)> {
    with_parts(raw, |parts| {
        parts.nth(index).map(|(part, bytes)| (part, bytes.to_vec()))
    })
    .flatten()
}

/// The HTML with each `cid:` reference to an image part of the same mail
/// replaced by a `data:` URI of its bytes, so that a frame allowed no
/// other images than `data:` still shows the mail's logo.
pub fn inline_images(html: &str, raw: &[u8]) -> String {
    if !html.contains("cid:") {
        return html.to_string();
    }
    let images: Vec<(String, String)> = with_parts(raw, |parts| {
        parts
            .filter(|(part, _)| part.content_type.starts_with("image/"))
            .filter_map(|(part, bytes)| {
                let cid = part.content_id?;
                Some((
                    format!("cid:{cid}"),
                    format!("data:{};base64,{}", part.content_type, base64(bytes)),
                ))
            })
            .collect()
    })
    .unwrap_or_default();
    images
        .iter()
        .fold(html.to_string(), |html, (cid, data)| html.replace(cid.as_str(), data))
}

/// Runs `f` over the parsed parts; `None` when the source does not parse
/// (or mail-parser panics on it, as [`super::capture`] guards too).
fn with_parts<T>(raw: &[u8], f: impl FnOnce(&mut dyn Iterator<Item = (MailPart, &[u8])>) -> T) -> Option<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let message = MessageParser::default().parse(raw)?;
        let mut parts = parts_of(&message, raw);
        Some(f(&mut parts))
    }))
    .ok()
    .flatten()
}

fn parts_of<'a>(message: &'a Message<'_>, raw: &'a [u8]) -> impl Iterator<Item = (MailPart, &'a [u8])> + 'a {
    message.attachments().enumerate().map(move |(index, p)| {
        // A forwarded mail (message/rfc822) is its bytes in the source:
        // mail-parser's own view of one that parsed to nothing panics
        // (found by the mail_view fuzz target).
        let contents = if p.is_message() {
            raw.get(p.raw_body_offset()..p.raw_end_offset()).unwrap_or_default()
        } else {
            p.contents()
        };
        let inline = p
            .content_disposition()
            .is_some_and(|d| d.ctype().eq_ignore_ascii_case("inline"));
        let part = MailPart {
            index,
            name: p.attachment_name().map(str::to_string),
            content_type: content_type(p.content_type()),
            size: contents.len(),
            content_id: p
                .content_id()
                .map(|id| id.trim().trim_start_matches('<').trim_end_matches('>').to_string())
                .filter(|id| !id.is_empty()),
            inline,
        };
        (part, contents)
    })
}

/// `type/subtype` in lower case when both are MIME tokens; a part that
/// names none, or names one that could smuggle anything into a header or a
/// `data:` URI, is `application/octet-stream`.
fn content_type(ct: Option<&mail_parser::ContentType>) -> String {
    let token = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
    };
    match ct {
        Some(ct) => match ct.subtype() {
            Some(sub) if token(ct.ctype()) && token(sub) => format!("{}/{}", ct.ctype(), sub).to_ascii_lowercase(),
            _ => "application/octet-stream".into(),
        },
        None => "application/octet-stream".into(),
    }
}

/// Standard base64 with padding (RFC 4648 section 4).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAIL: &str = "From: shop@example.jp\r\n\
        To: taro@example.jp\r\n\
        Subject: code\r\n\
        MIME-Version: 1.0\r\n\
        Content-Type: multipart/mixed; boundary=\"outer\"\r\n\
        \r\n\
        --outer\r\n\
        Content-Type: multipart/related; boundary=\"rel\"\r\n\
        \r\n\
        --rel\r\n\
        Content-Type: text/html; charset=utf-8\r\n\
        \r\n\
        <p><img src=\"cid:logo@shop\" alt=\"logo\"> Your code is 123456</p>\r\n\
        --rel\r\n\
        Content-Type: image/png\r\n\
        Content-ID: <logo@shop>\r\n\
        Content-Disposition: inline; filename=\"logo.png\"\r\n\
        Content-Transfer-Encoding: base64\r\n\
        \r\n\
        iVBORw0KGgo=\r\n\
        --rel--\r\n\
        --outer\r\n\
        Content-Type: application/pdf; name=\"receipt.pdf\"\r\n\
        Content-Disposition: attachment; filename=\"receipt.pdf\"\r\n\
        Content-Transfer-Encoding: base64\r\n\
        \r\n\
        JVBERi0xLjQK\r\n\
        --outer\r\n\
        Content-Type: text/html\"><script>/x; name=\"odd.bin\"\r\n\
        Content-Disposition: attachment; filename=\"odd.bin\"\r\n\
        \r\n\
        odd\r\n\
        --outer--\r\n";

    #[test]
    fn parts_are_listed_in_order_with_their_decoded_sizes() {
        let parts = serde_json::to_value(list(MAIL.as_bytes())).unwrap();
        assert_eq!(
            parts,
            serde_json::json!([
                {"index": 0, "name": "logo.png", "content_type": "image/png", "size": 8,
                 "content_id": "logo@shop", "inline": true},
                {"index": 1, "name": "receipt.pdf", "content_type": "application/pdf", "size": 9, "inline": false},
                {"index": 2, "name": "odd.bin", "content_type": "application/octet-stream", "size": 3, "inline": false},
            ])
        );
        let (part, bytes) = get(MAIL.as_bytes(), 1).unwrap();
        assert_eq!(part.name.as_deref(), Some("receipt.pdf"));
        assert_eq!(bytes, b"%PDF-1.4\n");
        assert!(get(MAIL.as_bytes(), 3).is_none());
    }

    #[test]
    fn an_inline_image_named_by_cid_becomes_a_data_uri() {
        let html = "<p><img src=\"cid:logo@shop\" alt=\"logo\"> <img src=\"cid:elsewhere\"></p>";
        assert_eq!(
            inline_images(html, MAIL.as_bytes()),
            "<p><img src=\"data:image/png;base64,iVBORw0KGgo=\" alt=\"logo\"> <img src=\"cid:elsewhere\"></p>"
        );
        assert_eq!(inline_images("<p>no images</p>", MAIL.as_bytes()), "<p>no images</p>");
    }

    #[test]
    fn a_source_that_does_not_parse_has_no_parts() {
        assert!(list(b"").is_empty());
        assert!(get(b"", 0).is_none());
        assert_eq!(inline_images("<img src=\"cid:x\">", b""), "<img src=\"cid:x\">");
    }

    #[test]
    fn base64_pads_like_rfc_4648() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain}");
        }
    }
}

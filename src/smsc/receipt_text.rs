//! The text of an SMPP delivery receipt (SMPP 3.4 appendix B:
//! `id:X sub:001 dlvrd:001 submit date:YYMMDDhhmm done date:YYMMDDhhmm
//! stat:DELIVRD err:000 text:...`) written by the SMSC and read by otpgate's
//! own client, plus the SMPP absolute time format used in `query_sm_resp`.
//!
//! Pure functions only. The `text:` field quotes the start of the message,
//! which can hold an OTP code: nothing here logs or keeps it.

use crate::clock::{jst, receipt_date, Millis};
use chrono::TimeZone;

/// The characters of the message the receipt quotes in its `text:` field.
pub const QUOTED_CHARS: usize = 20;

/// What a receipt text says, field by field, as written (dates stay raw).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceiptFields {
    pub id: String,
    pub sub: String,
    pub dlvrd: String,
    pub submit_date: String,
    pub done_date: String,
    pub stat: String,
    pub err: String,
    pub text: String,
}

/// Writes the receipt text. `dlvrd` is 001 only for DELIVRD; `err` is printed
/// as three digits; the quoted text keeps printable ASCII and shows anything
/// else as `?`, because ESMEs read receipts as ASCII.
pub fn format(message_id: &str, stat: &str, err: u16, submit_date: Millis, done_date: Millis, text: &str) -> String {
    let dlvrd = if stat == "DELIVRD" { 1 } else { 0 };
    let quoted: String = text
        .chars()
        .take(QUOTED_CHARS)
        .map(|c| if c == ' ' || c.is_ascii_graphic() { c } else { '?' })
        .collect();
    format!(
        "id:{message_id} sub:001 dlvrd:{dlvrd:03} submit date:{} done date:{} stat:{stat} err:{:03} text:{quoted}",
        receipt_date(submit_date),
        receipt_date(done_date),
        err % 1000,
    )
}

/// Reads a receipt text, tolerating upper-case keys, missing fields and
/// extra spaces. `None` when it has neither an `id:` nor a `stat:` field,
/// i.e. when it is not a receipt at all.
pub fn parse(text: &str) -> Option<ReceiptFields> {
    // Everything after `text:` is the quoted message, which may itself
    // contain words like `stat:`; search the keys only before it.
    let lower = text.to_ascii_lowercase();
    let (head_end, quoted) = match find_key(&lower, "text:") {
        Some(at) => (at, text[at + 5..].to_string()),
        None => (text.len(), String::new()),
    };
    let head = &text[..head_end];
    let lower_head = &lower[..head_end];
    let field = |key: &str| -> Option<String> {
        let at = find_key(lower_head, key)? + key.len();
        let value = head[at..].trim_start_matches(' ');
        Some(value.split_whitespace().next().unwrap_or("").to_string())
    };
    let id = field("id:");
    let stat = field("stat:");
    if id.is_none() && stat.is_none() {
        return None;
    }
    Some(ReceiptFields {
        id: id.unwrap_or_default(),
        sub: field("sub:").unwrap_or_default(),
        dlvrd: field("dlvrd:").unwrap_or_default(),
        submit_date: field("submit date:").unwrap_or_default(),
        done_date: field("done date:").unwrap_or_default(),
        stat: stat.unwrap_or_default(),
        err: field("err:").unwrap_or_default(),
        text: quoted,
    })
}

/// The receipt text as otpgate may keep it: every digit of the quoted
/// message (after `text:`) shown as `*`, since those 20 characters can end
/// in the first digits of a code (`【AB】ワンタイムパスワード: 1234`), which
/// no masking by runs of digits would catch. The receipt's own fields stay.
/// A text that does not read as a receipt at all gets every digit masked.
pub fn mask_quoted(text: &str) -> String {
    match find_key(&text.to_ascii_lowercase(), "text:") {
        Some(at) => format!("{}{}", &text[..at + 5], star_digits(&text[at + 5..])),
        None if parse(text).is_some() => text.to_string(),
        None => star_digits(text),
    }
}

/// Every ASCII digit of `text` shown as `*`: what may be kept of the
/// characters a receipt quotes.
pub fn star_digits(text: &str) -> String {
    text.chars().map(|c| if c.is_ascii_digit() { '*' } else { c }).collect()
}

/// Where `key` starts as a whole word (at the start or after a space).
fn find_key(haystack: &str, key: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(found) = haystack[from..].find(key) {
        let at = from + found;
        if at == 0 || haystack.as_bytes()[at - 1] == b' ' {
            return Some(at);
        }
        from = at + key.len();
    }
    None
}

/// SMPP absolute time `YYMMDDhhmmsstnnp` in Japan time (`nn` = 36 quarter
/// hours ahead of UTC), as `query_sm_resp` carries `final_date`.
pub fn smpp_absolute_time(at: Millis) -> String {
    match jst().timestamp_millis_opt(at).single() {
        Some(dt) => format!("{}{}36+", dt.format("%y%m%d%H%M%S"), (at.rem_euclid(1000)) / 100),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::DEFAULT_VIRTUAL_START;

    #[test]
    fn masking_keeps_the_fields_and_hides_every_digit_of_the_quote() {
        let text = format(
            "0000000007",
            "DELIVRD",
            0,
            DEFAULT_VIRTUAL_START,
            DEFAULT_VIRTUAL_START,
            "【AB】ワンタイムパスワード: 171766",
        );
        assert!(text.ends_with("text:?AB???????????: 1717"), "{text}");
        let masked = mask_quoted(&text);
        assert!(masked.ends_with("text:?AB???????????: ****"), "{masked}");
        assert_eq!(
            parse(&masked).unwrap(),
            ReceiptFields {
                text: "?AB???????????: ****".into(),
                ..parse(&text).unwrap()
            }
        );
        assert_eq!(
            mask_quoted("ID:9 STAT:UNDELIV TEXT:Code 12"),
            "ID:9 STAT:UNDELIV TEXT:Code **"
        );
        assert_eq!(mask_quoted("id:9 stat:DELIVRD err:000"), "id:9 stat:DELIVRD err:000");
        assert_eq!(mask_quoted("your code 123456"), "your code ******");
    }

    #[test]
    fn writes_the_appendix_b_format() {
        let text = format(
            "m-42",
            "DELIVRD",
            0,
            DEFAULT_VIRTUAL_START,
            DEFAULT_VIRTUAL_START + 61_000,
            "Your code is 482913, valid 10 min",
        );
        assert_eq!(
            text,
            "id:m-42 sub:001 dlvrd:001 submit date:2601010000 done date:2601010001 stat:DELIVRD err:000 text:Your code is 482913,"
        );
        let failed = format("x", "UNDELIV", 22, 0, 0, "認証コード");
        assert!(failed.contains("dlvrd:000"), "{failed}");
        assert!(failed.contains("err:022"), "{failed}");
        assert!(failed.ends_with("text:?????"), "{failed}");
    }

    #[test]
    fn reads_what_it_writes_and_what_others_write() {
        let text = format("abc", "REJECTD", 11, 0, 0, "stat:DELIVRD tricky");
        let fields = parse(&text).unwrap();
        assert_eq!(fields.id, "abc");
        assert_eq!(fields.stat, "REJECTD");
        assert_eq!(fields.err, "011");
        assert_eq!(fields.dlvrd, "000");
        assert_eq!(fields.done_date, "7001010900");
        assert_eq!(fields.text, "stat:DELIVRD tricky");

        let other =
            parse("ID:77 SUB:1 DLVRD:1 SUBMIT DATE:2601010000 DONE DATE:2601010005 STAT:EXPIRED ERR:0").unwrap();
        assert_eq!((other.id.as_str(), other.stat.as_str()), ("77", "EXPIRED"));
        assert_eq!(other.done_date, "2601010005");
        assert_eq!(other.text, "");
        assert_eq!(parse("hello there"), None);
    }

    #[test]
    fn absolute_time_is_japan_time() {
        assert_eq!(smpp_absolute_time(DEFAULT_VIRTUAL_START + 1_500), "260101000001536+");
    }
}

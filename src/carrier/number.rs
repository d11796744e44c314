//! Sender numbers as the carrier models compare and show them.
//!
//! A sender is written many ways (`03-5460-0124`, `0354600124`,
//! `+81354600124`, `81354600124`); the models compare their national digits
//! and show them hyphenated as a Japanese handset does. This module only
//! reads and formats strings: it never decides what a carrier does with a
//! number, and it never guesses a carrier from a prefix (number portability
//! makes that wrong).

/// The national digits of a Japanese number however it is written
/// (`"+81 3-5460-0124"` and `"81354600124"` both give `"0354600124"`).
///
/// Separators are dropped. A foreign number keeps its `+` and country code
/// (`"+1 555 0100"` gives `"+15550100"`) so that it never equals a domestic
/// one, and a short code stays as it is (`"22471"`). A text with no digits
/// gives an empty string.
pub fn national_digits(s: &str) -> String {
    let trimmed = s.trim();
    let digits: String = trimmed.chars().filter(char::is_ascii_digit).collect();
    let international = if trimmed.starts_with('+') {
        Some(digits.as_str())
    } else if let Some(rest) = digits.strip_prefix("00").or_else(|| digits.strip_prefix("010")) {
        // 00 and 010 are the international prefixes dialled from Japan.
        rest.starts_with("81").then_some(rest)
    } else if digits.starts_with("81") && digits.len() >= 10 {
        // A domestic number starts with 0, so 81 and nine or more digits
        // can only be Japan's country code written without the plus.
        Some(digits.as_str())
    } else {
        None
    };
    match international {
        Some(number) => match number.strip_prefix("81") {
            // "+81 (0)3 ..." writes the trunk 0 too; drop it before adding ours.
            Some(rest) => format!("0{}", rest.strip_prefix('0').unwrap_or(rest)),
            None => format!("+{number}"),
        },
        None => digits,
    }
}

/// Whether two senders are the same: the same national digits for numbers,
/// the same text (ignoring case) for alphanumeric sender IDs.
pub fn same_sender(a: &str, b: &str) -> bool {
    let alphanumeric = |s: &str| s.chars().any(|c| c.is_alphabetic());
    if alphanumeric(a) || alphanumeric(b) {
        return a.trim().eq_ignore_ascii_case(b.trim());
    }
    let (a, b) = (national_digits(a), national_digits(b));
    !a.is_empty() && a == b
}

/// Whether national digits are a Japanese mobile number (060, 070, 080, 090
/// and eleven digits). Such a number may belong to any carrier.
pub fn is_mobile(national: &str) -> bool {
    // 0800 is toll-free, not a mobile 080 number.
    national.len() == 11
        && !national.starts_with("0800")
        && ["060", "070", "080", "090"].iter().any(|p| national.starts_with(p))
}

/// Whether national digits are a domestic number that no mobile network
/// owns: a fixed line (03-...), an IP phone (050) or a toll-free or
/// navigation-dial number. To a mobile carrier's "reject SMS from other
/// domestic operators" setting these always come from another operator.
pub fn is_domestic_non_mobile(national: &str) -> bool {
    national.starts_with('0')
        && !is_mobile(national)
        && (10..=11).contains(&national.len())
        && national.chars().all(|c| c.is_ascii_digit())
}

/// A sender as a Japanese handset shows it: `03-5460-0124`,
/// `090-1234-5678`, `0120-123-456`. Short codes and foreign numbers are
/// shown as digits, alphanumeric senders as written.
///
/// Fixed-line area codes run from one to four digits after the 0 and only a
/// full numbering-plan table tells them apart, so a fixed-line number
/// outside Tokyo (03) and Osaka (06) is shown as plain digits rather than
/// hyphenated wrongly.
pub fn display_number(sender: &str) -> String {
    if sender.chars().any(|c| c.is_alphabetic()) {
        return sender.trim().to_string();
    }
    let n = national_digits(sender);
    let groups: &[usize] = match n.len() {
        11 if is_mobile(&n) || n.starts_with("050") => &[3, 4, 4],
        11 if n.starts_with("0800") => &[4, 3, 4],
        10 if ["0120", "0570", "0990"].iter().any(|p| n.starts_with(p)) => &[4, 3, 3],
        10 if n.starts_with("03") || n.starts_with("06") => &[2, 4, 4],
        _ => return n,
    };
    let mut parts = Vec::with_capacity(groups.len());
    let mut at = 0;
    for len in groups {
        parts.push(&n[at..at + len]);
        at += len;
    }
    parts.join("-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_the_sender_has_the_same_national_digits() {
        for written in [
            "03-5460-0124",
            "0354600124",
            "+81354600124",
            "81354600124",
            "+81 3 5460 0124",
            "+81 (0)3-5460-0124",
            "010-81-3-5460-0124",
            " 03 5460 0124 ",
        ] {
            assert_eq!(national_digits(written), "0354600124", "{written}");
        }
    }

    #[test]
    fn short_codes_foreign_numbers_and_words_stay_apart() {
        assert_eq!(national_digits("22471"), "22471");
        assert_eq!(national_digits("+1 555 0100"), "+15550100");
        assert_eq!(national_digits("JAL"), "");
        assert_eq!(national_digits("+819012345678"), "09012345678");
    }

    #[test]
    fn senders_compare_by_number_or_by_name() {
        assert!(same_sender("+81354600124", "03-5460-0124"));
        assert!(!same_sender("22471", "03-5460-0124"));
        assert!(same_sender("JAL", "jal"));
        assert!(!same_sender("", ""));
        assert!(!same_sender("JAL", ""));
    }

    #[test]
    fn numbers_are_shown_as_a_japanese_handset_shows_them() {
        let check = |input: &str, shown: &str| assert_eq!(display_number(input), shown, "{input}");
        check("0354600124", "03-5460-0124");
        check("+81354600124", "03-5460-0124");
        check("09012345678", "090-1234-5678");
        check("05012345678", "050-1234-5678");
        check("0120123456", "0120-123-456");
        check("08001234567", "0800-123-4567");
        check("0451234567", "0451234567");
        check("22471", "22471");
        check("JAL OTP", "JAL OTP");
    }

    #[test]
    fn mobile_and_non_mobile_numbers() {
        assert!(is_mobile("09012345678"));
        assert!(!is_mobile("0354600124"));
        assert!(!is_mobile("08001234567"));
        assert!(is_domestic_non_mobile("0354600124"));
        assert!(is_domestic_non_mobile("05012345678"));
        assert!(!is_domestic_non_mobile("09012345678"));
        assert!(!is_domestic_non_mobile("22471"));
        assert!(!is_domestic_non_mobile("+15550100"));
    }
}

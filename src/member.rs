//! Members, their phone numbers and their notification destination: the
//! pure rules (number parsing, who may use SMS, masking).
//!
//! This module does no I/O; the service stores what it decides.

use serde::{Deserialize, Serialize};

use crate::clock::Millis;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Sms,
    Email,
}

impl Channel {
    pub const ALL: [Channel; 2] = [Channel::Sms, Channel::Email];

    /// `sms` or `email`.
    pub fn named(name: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Sms => "sms",
            Channel::Email => "email",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Phone {
    /// E.164, e.g. `+819012345678`.
    pub number: String,
    pub verified: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: String,
    /// `ja` or `en`: the language of messages and reports.
    pub locale: String,
    /// ISO 3166 alpha-2; SMS is only for `JP`.
    pub residence: String,
    pub email: Option<String>,
    pub phone: Option<Phone>,
    pub notification: Option<Channel>,
    pub created_at: Millis,
}

/// Why a member change is refused; each maps to a stable error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemberError {
    #[error("{0}")]
    Invalid(String),
    #[error("`{0}` is not a Japanese mobile number (070, 080, 090 or 060, 11 digits)")]
    InvalidNumber(String),
    #[error("`{0}` is a fixed-line number, which cannot receive SMS")]
    FixedLine(String),
    #[error("SMS is only for members living in Japan; use email")]
    SmsRequiresJapan,
    #[error("the mobile number is not verified yet: confirm it with the code sent by SMS first")]
    PhoneNotVerified,
    #[error("the member has no {0} to send to")]
    NoDestination(&'static str),
}

impl MemberError {
    pub fn code(&self) -> &'static str {
        match self {
            MemberError::Invalid(_) => "invalid_request",
            MemberError::InvalidNumber(_) => "invalid_number",
            MemberError::FixedLine(_) => "fixed_line_number",
            MemberError::SmsRequiresJapan => "sms_requires_japan_residence",
            MemberError::PhoneNotVerified => "phone_not_verified",
            MemberError::NoDestination(_) => "no_destination",
        }
    }
}

/// A Japanese number as users write it (`090-1234-5678`, `09012345678`,
/// `+81 90 1234 5678`, `819012345678`) in E.164, if it is a mobile number.
pub fn parse_mobile(input: &str) -> Result<String, MemberError> {
    let national = national_number(input).ok_or_else(|| MemberError::InvalidNumber(input.trim().to_string()))?;
    let is_mobile = ["070", "080", "090", "060"].iter().any(|p| national.starts_with(p)) && national.len() == 11;
    if is_mobile {
        return Ok(format!("+81{}", &national[1..]));
    }
    if national.len() == 10 && !national.starts_with("00") {
        return Err(MemberError::FixedLine(input.trim().to_string()));
    }
    Err(MemberError::InvalidNumber(input.trim().to_string()))
}

/// The national form (`09012345678`) of a Japanese number in any spelling.
pub fn national_number(input: &str) -> Option<String> {
    let trimmed = input.trim();
    let mut digits = String::new();
    for (i, ch) in trimmed.chars().enumerate() {
        match ch {
            '0'..='9' => digits.push(ch),
            '０'..='９' => digits.push(char::from(b'0' + (ch as u32 - '０' as u32) as u8)),
            '+' if i == 0 => {}
            ' ' | '-' | '(' | ')' | '.' | '‐' | '－' | '−' | 'ー' => {}
            _ => return None,
        }
    }
    let international = trimmed.starts_with('+') || (digits.starts_with("81") && digits.len() >= 11);
    let national = if international {
        let rest = digits.strip_prefix("81")?;
        format!("0{rest}")
    } else {
        digits
    };
    (national.starts_with('0') && (10..=11).contains(&national.len())).then_some(national)
}

/// `+819012345678` as a Japanese phone shows it: `090-1234-5678`.
pub fn display_number(e164_or_national: &str) -> String {
    let Some(n) = national_number(e164_or_national) else {
        return e164_or_national.to_string();
    };
    if n.len() == 11 {
        format!("{}-{}-{}", &n[..3], &n[3..7], &n[7..])
    } else if n.starts_with("03") || n.starts_with("06") {
        format!("{}-{}-{}", &n[..2], &n[2..6], &n[6..])
    } else {
        format!("{}-{}-{}", &n[..3], &n[3..6], &n[6..])
    }
}

/// `090-****-5678`: enough for the member to recognise, not to misuse.
pub fn mask_number(e164: &str) -> String {
    let shown = display_number(e164);
    let parts: Vec<&str> = shown.split('-').collect();
    if parts.len() == 3 {
        format!("{}-{}-{}", parts[0], "*".repeat(parts[1].len()), parts[2])
    } else {
        "*".repeat(shown.len().saturating_sub(4)) + &shown[shown.len().saturating_sub(4)..]
    }
}

/// `e***@example.org`.
pub fn mask_email(address: &str) -> String {
    match address.split_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => "***".into(),
    }
}

/// A plausible address: one `@`, a dotted domain, no spaces. Returned lowercased in the domain.
pub fn parse_email(input: &str) -> Result<String, MemberError> {
    let input = input.trim();
    let bad = || MemberError::Invalid(format!("`{input}` is not an email address"));
    let (local, domain) = input.split_once('@').ok_or_else(bad)?;
    if local.is_empty()
        || domain.is_empty()
        || !domain.contains('.')
        || domain.contains('@')
        || input.len() > 254
        || input.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(bad());
    }
    Ok(format!("{local}@{}", domain.to_ascii_lowercase()))
}

impl Member {
    pub fn lives_in_japan(&self) -> bool {
        self.residence.eq_ignore_ascii_case("JP")
    }

    /// May this member register a number for SMS?
    pub fn check_can_register_phone(&self) -> Result<(), MemberError> {
        if !self.lives_in_japan() {
            return Err(MemberError::SmsRequiresJapan);
        }
        Ok(())
    }

    /// May the destination become `channel`?
    pub fn check_destination(&self, channel: Channel) -> Result<(), MemberError> {
        match channel {
            Channel::Sms => {
                if !self.lives_in_japan() {
                    return Err(MemberError::SmsRequiresJapan);
                }
                match &self.phone {
                    Some(p) if p.verified => Ok(()),
                    Some(_) => Err(MemberError::PhoneNotVerified),
                    None => Err(MemberError::NoDestination("mobile number")),
                }
            }
            Channel::Email => match &self.email {
                Some(_) => Ok(()),
                None => Err(MemberError::NoDestination("email address")),
            },
        }
    }

    /// Where an OTP goes now: the channel and its address.
    pub fn destination(&self) -> Result<(Channel, String), MemberError> {
        match self.notification {
            Some(Channel::Sms) => {
                self.check_destination(Channel::Sms)?;
                let phone = self.phone.as_ref().ok_or(MemberError::NoDestination("mobile number"))?;
                Ok((Channel::Sms, phone.number.clone()))
            }
            Some(Channel::Email) => {
                let email = self.email.clone().ok_or(MemberError::NoDestination("email address"))?;
                Ok((Channel::Email, email))
            }
            None => Err(MemberError::NoDestination("notification destination")),
        }
    }
}

/// Normalises a locale to `ja` or `en`.
pub fn parse_locale(input: &str) -> Result<String, MemberError> {
    match input.trim().to_ascii_lowercase().as_str() {
        "ja" | "ja-jp" => Ok("ja".into()),
        "en" | "en-us" | "en-gb" => Ok("en".into()),
        other => Err(MemberError::Invalid(format!("locale `{other}` is not `ja` or `en`"))),
    }
}

/// Normalises a residence to an upper-case ISO 3166 alpha-2 code.
pub fn parse_residence(input: &str) -> Result<String, MemberError> {
    let r = input.trim().to_ascii_uppercase();
    if r.len() == 2 && r.chars().all(|c| c.is_ascii_uppercase()) {
        Ok(r)
    } else {
        Err(MemberError::Invalid(format!(
            "residence `{input}` is not a two-letter country code like JP"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expect: Result<&str, &str>) {
        let got = parse_mobile(input);
        match expect {
            Ok(e164) => assert_eq!(got, Ok(e164.to_string()), "{input}"),
            Err(code) => assert_eq!(got.map_err(|e| e.code()), Err(code), "{input}"),
        }
    }

    #[test]
    fn numbers_as_users_write_them() {
        check("090-1234-5678", Ok("+819012345678"));
        check("09012345678", Ok("+819012345678"));
        check("+81 90 1234 5678", Ok("+819012345678"));
        check("819012345678", Ok("+819012345678"));
        check("080 2222 0002", Ok("+818022220002"));
        check("０９０−１２３４−５６７８", Ok("+819012345678"));
        check("070-1234-5678", Ok("+817012345678"));
        check("03-1234-5678", Err("fixed_line_number"));
        check("+81354600124", Err("fixed_line_number"));
        check("12345", Err("invalid_number"));
        check("090-1234-567a", Err("invalid_number"));
        check("", Err("invalid_number"));
    }

    #[test]
    fn display_and_mask() {
        assert_eq!(display_number("+819012345678"), "090-1234-5678");
        assert_eq!(display_number("0354600124"), "03-5460-0124");
        assert_eq!(mask_number("+819012345678"), "090-****-5678");
        assert_eq!(mask_email("e1@example.org"), "e***@example.org");
    }

    #[test]
    fn sms_needs_japan_and_a_verified_number() {
        let mut m = Member {
            id: "M".into(),
            locale: "en".into(),
            residence: "US".into(),
            email: Some("a@b.c".into()),
            phone: None,
            notification: Some(Channel::Email),
            created_at: 0,
        };
        assert_eq!(m.check_destination(Channel::Sms), Err(MemberError::SmsRequiresJapan));
        m.residence = "JP".into();
        m.phone = Some(Phone {
            number: "+819012345678".into(),
            verified: false,
        });
        assert_eq!(m.check_destination(Channel::Sms), Err(MemberError::PhoneNotVerified));
        m.phone.as_mut().unwrap().verified = true;
        assert_eq!(m.check_destination(Channel::Sms), Ok(()));
    }
}

//! The OTP core: codes, their keyed hash, expiry, attempts, supersede and
//! send limits, as pure functions of plain data, a clock reading and a key.
//!
//! It never keeps a plain code: `issue` hands the code to the caller once, to
//! be put in the outgoing message, and stores only its HMAC. It does no I/O.

use hmac::{Hmac, Mac};
use rand::{CryptoRng, Rng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::clock::Millis;
use crate::member::Channel;

/// The server secret that keys the code hashes.
#[derive(Clone)]
pub struct HashKey(pub [u8; 32]);

impl std::fmt::Debug for HashKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HashKey(..)")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OtpStatus {
    Pending,
    Verified,
    Locked,
    Superseded,
}

/// One entered code, kept for the troubleshooting desk (never the code itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub at: Millis,
    /// The answer given: `verified`, `invalid_code`, `superseded`, `expired`, ...
    pub result: String,
    /// The older OTP whose code was entered, when it was one.
    pub matched_otp: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Otp {
    pub id: String,
    pub member_id: String,
    pub purpose: String,
    pub channel: Channel,
    /// E.164 number or email address.
    pub destination: String,
    /// The sender ID the member should look for.
    pub sender: String,
    /// Hex HMAC-SHA256 of the OTP id and the code.
    pub code_hash: String,
    pub issued_at: Millis,
    pub expires_at: Millis,
    pub status: OtpStatus,
    /// Wrong codes entered so far.
    pub attempts: u32,
    pub max_attempts: u32,
    pub superseded_by: Option<String>,
    pub verified_at: Option<Millis>,
    pub entries: Vec<Entry>,
    /// The delivery-log message that carried the code.
    pub message_id: Option<String>,
}

/// The answer to one verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Verified,
    InvalidCode { attempts_left: u32 },
    Expired,
    AlreadyUsed,
    Superseded { matched_older: Option<String> },
    Locked,
}

impl Verdict {
    pub fn code(&self) -> &'static str {
        match self {
            Verdict::Verified => "verified",
            Verdict::InvalidCode { .. } => "invalid_code",
            Verdict::Expired => "expired",
            Verdict::AlreadyUsed => "already_used",
            Verdict::Superseded { .. } => "superseded",
            Verdict::Locked => "locked",
        }
    }
}

/// A fresh 6-digit code from a cryptographic generator; `gen_range`
/// samples by rejection, so there is no modulo bias.
pub fn generate_code<R: RngCore + CryptoRng>(rng: &mut R) -> String {
    format!("{:06}", rng.gen_range(0..1_000_000u32))
}

fn mac(key: &HashKey, otp_id: &str, code: &str) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key.0).expect("HMAC takes any key length");
    mac.update(otp_id.as_bytes());
    mac.update(b":");
    mac.update(code.as_bytes());
    mac
}

pub fn hash_code(key: &HashKey, otp_id: &str, code: &str) -> String {
    hex(&mac(key, otp_id, code).finalize().into_bytes())
}

/// Lower-case hexadecimal, two digits a byte: the stored hashes, OTP ids
/// and the core's SMPP password. Built directly, since a `format!` per
/// byte was 4% of the server's CPU under verify (BENCHMARKS.md, eighteenth
/// round).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// Constant-time comparison of an entered code with the stored hash.
pub fn code_matches(key: &HashKey, otp: &Otp, entered: &str) -> bool {
    let computed = hash_code(key, &otp.id, entered.trim());
    computed.as_bytes().ct_eq(otp.code_hash.as_bytes()).into()
}

/// What the caller needs to issue an OTP.
pub struct Issue<'a> {
    pub id: String,
    pub member_id: &'a str,
    pub purpose: &'a str,
    pub channel: Channel,
    pub destination: &'a str,
    pub sender: String,
    pub now: Millis,
    pub validity_ms: Millis,
    pub max_attempts: u32,
}

/// A new OTP and its plain code (to be sent, never stored).
pub fn issue<R: RngCore + CryptoRng>(key: &HashKey, spec: Issue<'_>, rng: &mut R) -> (Otp, String) {
    let code = generate_code(rng);
    let otp = Otp {
        code_hash: hash_code(key, &spec.id, &code),
        id: spec.id,
        member_id: spec.member_id.to_string(),
        purpose: spec.purpose.to_string(),
        channel: spec.channel,
        destination: spec.destination.to_string(),
        sender: spec.sender,
        issued_at: spec.now,
        expires_at: spec.now + spec.validity_ms,
        status: OtpStatus::Pending,
        attempts: 0,
        max_attempts: spec.max_attempts,
        superseded_by: None,
        verified_at: None,
        entries: Vec::new(),
        message_id: None,
    };
    (otp, code)
}

impl Otp {
    pub fn attempts_left(&self) -> u32 {
        self.max_attempts.saturating_sub(self.attempts)
    }

    pub fn is_expired(&self, now: Millis) -> bool {
        now >= self.expires_at
    }

    /// The status an answer shows: `expired` is read off the clock.
    pub fn shown_status(&self, now: Millis) -> &'static str {
        match self.status {
            OtpStatus::Pending if self.is_expired(now) => "expired",
            OtpStatus::Pending => "pending",
            OtpStatus::Verified => "verified",
            OtpStatus::Locked => "locked",
            OtpStatus::Superseded => "superseded",
        }
    }
}

/// Checks an entered code against `otp`, in the pinned order: locked,
/// already used, superseded, expired, then the code. `older` are the OTPs
/// this one superseded: a wrong code that matches one of them answers
/// `superseded` and still counts as an attempt. They are loaded only for a
/// wrong code on a pending OTP, the one case that looks at them, so a
/// right code costs one record read. Mutates `otp` and returns the
/// verdict (or the loader's error, with `otp` unchanged); the caller
/// stores `otp` before answering.
pub fn verify<E>(
    key: &HashKey,
    otp: &mut Otp,
    entered: &str,
    older: impl FnOnce() -> Result<Vec<Otp>, E>,
    now: Millis,
) -> Result<Verdict, E> {
    let verdict = match otp.status {
        OtpStatus::Locked => Verdict::Locked,
        OtpStatus::Verified => Verdict::AlreadyUsed,
        OtpStatus::Superseded => Verdict::Superseded { matched_older: None },
        OtpStatus::Pending if otp.is_expired(now) => Verdict::Expired,
        OtpStatus::Pending => {
            if code_matches(key, otp, entered) {
                otp.status = OtpStatus::Verified;
                otp.verified_at = Some(now);
                Verdict::Verified
            } else {
                let older = older()?;
                otp.attempts += 1;
                if otp.attempts >= otp.max_attempts {
                    otp.status = OtpStatus::Locked;
                }
                match older.iter().find(|o| code_matches(key, o, entered)) {
                    Some(o) => Verdict::Superseded {
                        matched_older: Some(o.id.clone()),
                    },
                    None => Verdict::InvalidCode {
                        attempts_left: otp.attempts_left(),
                    },
                }
            }
        }
    };
    let matched_otp = match &verdict {
        Verdict::Superseded { matched_older } => matched_older.clone(),
        _ => None,
    };
    otp.entries.push(Entry {
        at: now,
        result: verdict.code().to_string(),
        matched_otp,
    });
    // Keep the record bounded even under a flood of entries on a locked OTP.
    if otp.entries.len() > 50 {
        otp.entries.drain(..otp.entries.len() - 50);
    }
    Ok(verdict)
}

/// Send limits: a cooldown between sends to one destination and a cap per
/// window. `sends` are earlier send times to the destination.
pub struct SendLimits {
    pub cooldown_ms: Millis,
    pub cap: usize,
    pub window_ms: Millis,
}

impl SendLimits {
    /// `Ok` to send now, or `Err(seconds)` until the next send is allowed.
    pub fn check(&self, sends: &[Millis], now: Millis) -> Result<(), i64> {
        let mut retry_at = now;
        if let Some(last) = sends.iter().copied().max() {
            retry_at = retry_at.max(last + self.cooldown_ms);
        }
        let mut in_window: Vec<Millis> = sends.iter().copied().filter(|t| *t > now - self.window_ms).collect();
        in_window.sort_unstable();
        if in_window.len() >= self.cap {
            let oldest_that_must_leave = in_window[in_window.len() - self.cap];
            retry_at = retry_at.max(oldest_that_must_leave + self.window_ms);
        }
        if retry_at > now {
            Err((retry_at - now + 999) / 1000)
        } else {
            Ok(())
        }
    }

    /// The send times still relevant at `now` (older ones can be forgotten).
    pub fn prune(&self, sends: &mut Vec<Millis>, now: Millis) {
        let keep_from = now - self.window_ms.max(self.cooldown_ms);
        sends.retain(|t| *t > keep_from);
    }
}

/// Replaces every run of 4 to 8 digits with asterisks: what the delivery
/// log keeps of a message text it did not write itself.
pub fn mask_digits(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if (4..=8).contains(&run.chars().count()) {
            out.push_str(&"*".repeat(run.chars().count()));
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for ch in text.chars() {
        if ch.is_ascii_digit() {
            run.push(ch);
        } else {
            flush(&mut run, &mut out);
            out.push(ch);
        }
    }
    flush(&mut run, &mut out);
    out
}

/// The newest 6-digit code in a text, as an end-to-end test reads it.
pub fn find_code(text: &str) -> Option<String> {
    let mut found = None;
    let mut run = String::new();
    for ch in text.chars().chain(std::iter::once(' ')) {
        if ch.is_ascii_digit() {
            run.push(ch);
        } else {
            if run.len() == 6 {
                found = Some(run.clone());
            }
            run.clear();
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::OsRng;

    fn key() -> HashKey {
        HashKey([7; 32])
    }

    #[test]
    fn hex_is_two_lower_case_digits_a_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xab, 0xff]), "000fabff");
        assert_eq!(hex(&[]), "");
    }

    fn fresh(id: &str, now: Millis) -> (Otp, String) {
        issue(
            &key(),
            Issue {
                id: id.into(),
                member_id: "M1",
                purpose: "login",
                channel: Channel::Sms,
                destination: "+819011110001",
                sender: "03-5460-0124".into(),
                now,
                validity_ms: 600_000,
                max_attempts: 5,
            },
            &mut OsRng,
        )
    }

    fn wrong(code: &str) -> String {
        format!("{:06}", (code.parse::<u32>().unwrap() + 1) % 1_000_000)
    }

    /// `verify` with the older OTPs at hand.
    fn check(otp: &mut Otp, entered: &str, older: &[Otp], now: Millis) -> Verdict {
        verify(&key(), otp, entered, || Ok::<_, ()>(older.to_vec()), now).unwrap()
    }

    #[test]
    fn codes_are_six_digits_and_never_stored_plain() {
        for _ in 0..200 {
            let (otp, code) = fresh("o1", 0);
            assert_eq!(code.len(), 6);
            assert!(code.chars().all(|c| c.is_ascii_digit()));
            // The code in no field. The destination, the sender, the times
            // and the hash's hex are digits too, so a substring search over
            // the whole record found a code there about one run in 300.
            let stored = serde_json::to_value(&otp).unwrap();
            let fields = stored.as_object().unwrap();
            for (name, value) in fields {
                let text = value.to_string();
                let inputs = ["destination", "sender", "code_hash", "issued_at", "expires_at"];
                assert!(
                    inputs.contains(&name.as_str()) || !text.contains(&code),
                    "{name} holds the code"
                );
                assert_ne!(text.trim_matches('"'), code, "{name} is the code");
            }
            assert_eq!(otp.code_hash.len(), 64, "a keyed hash, not the code");
        }
    }

    #[test]
    fn right_code_verifies_once() {
        let (mut otp, code) = fresh("o1", 0);
        assert_eq!(check(&mut otp, &code, &[], 1000), Verdict::Verified);
        assert_eq!(check(&mut otp, &code, &[], 2000), Verdict::AlreadyUsed);
    }

    #[test]
    fn expiry_is_checked_before_the_code() {
        let (mut otp, code) = fresh("o1", 0);
        assert_eq!(check(&mut otp, &code, &[], 601_000), Verdict::Expired);
        assert_eq!(otp.shown_status(601_000), "expired");
    }

    #[test]
    fn five_wrong_codes_lock() {
        let (mut otp, code) = fresh("o1", 0);
        for left in (0..5).rev() {
            assert_eq!(
                check(&mut otp, &wrong(&code), &[], 1),
                Verdict::InvalidCode { attempts_left: left }
            );
        }
        assert_eq!(check(&mut otp, &code, &[], 1), Verdict::Locked);
    }

    #[test]
    fn an_older_code_answers_superseded_and_counts() {
        let (mut old, old_code) = fresh("o1", 0);
        let (mut new, _) = fresh("o2", 1);
        old.status = OtpStatus::Superseded;
        old.superseded_by = Some("o2".into());
        let v = check(&mut new, &old_code, std::slice::from_ref(&old), 2);
        assert_eq!(
            v,
            Verdict::Superseded {
                matched_older: Some("o1".into())
            }
        );
        assert_eq!(new.attempts, 1);
        assert_eq!(
            check(&mut old, &old_code, &[], 3),
            Verdict::Superseded { matched_older: None }
        );
    }

    #[test]
    fn older_otps_are_read_only_for_a_wrong_code_on_a_pending_otp() {
        let (mut otp, code) = fresh("o1", 0);
        let untouched = || -> Result<Vec<Otp>, ()> { panic!("older OTPs read") };
        assert_eq!(verify(&key(), &mut otp, &code, untouched, 1), Ok(Verdict::Verified));
        assert_eq!(
            verify(&key(), &mut otp, &wrong(&code), untouched, 2),
            Ok(Verdict::AlreadyUsed)
        );
        let (mut otp, code) = fresh("o2", 0);
        assert_eq!(
            verify(&key(), &mut otp, &wrong(&code), || Err("store down"), 1),
            Err("store down")
        );
        assert_eq!(
            (otp.attempts, otp.entries.len()),
            (0, 0),
            "a failed read leaves the OTP as it was"
        );
    }

    #[test]
    fn send_limits_cooldown_and_cap() {
        let limits = SendLimits {
            cooldown_ms: 60_000,
            cap: 5,
            window_ms: 600_000,
        };
        assert_eq!(limits.check(&[], 0), Ok(()));
        assert_eq!(limits.check(&[0], 30_000), Err(30));
        assert_eq!(limits.check(&[0], 60_000), Ok(()));
        let five = [0, 60_000, 120_000, 180_000, 240_000];
        assert_eq!(limits.check(&five, 300_000), Err(300));
        assert_eq!(limits.check(&five, 600_000), Ok(()));
    }

    #[test]
    fn masking_and_finding_codes() {
        assert_eq!(
            mask_digits("Your code is 482913. Call 03"),
            "Your code is ******. Call 03"
        );
        assert_eq!(find_code("コード: 123456 (10分)"), Some("123456".into()));
        assert_eq!(find_code("no code 12345"), None);
    }
}

//! The troubleshooting desk's brain: the answer to "I haven't received my
//! code" for one member (or one phone number or address with no member),
//! worked out from plain data — the registration, the OTPs and the codes
//! entered, the refused sends, the delivery log and the simulated handset or
//! mailbox — as findings ranked most likely first, each with its evidence and
//! an explanation and a remediation in Japanese or English, plus one merged
//! timeline.
//!
//! It is pure: everything, the current time included, comes in through
//! [`Case`]. It must never do I/O, read a clock, draw from a random
//! generator, or know about storage, HTTP or a wire format; and it must never
//! put a plain code in any output. It only ever sees masked message texts
//! and code hashes, and it quotes neither the hashes nor the texts it gets.
//!
//! Each code of the catalogue (DESIGN.md section 4, [`CODES`]) is one rule
//! function in `rules.rs`; ranking follows DESIGN.md section 7.

mod facts;
mod render;
mod rules;
mod timeline;

#[cfg(test)]
mod tests;

use serde::Serialize;

use crate::carrier::{CarrierSet, HandsetState, SenderProfile};
use crate::clock::Millis;
use crate::delivery::log::Message;
use crate::member::Member;
use crate::otp::Otp;
use crate::service::Refusal;
use crate::smtp::Mailbox;

pub use render::render_text;

/// Everything one diagnosis looks at. The caller gathers it; nothing here
/// fetches anything.
#[derive(Clone, Copy)]
pub struct Case<'a> {
    pub member: Option<&'a Member>,
    /// A phone number (any spelling) or an email address looked up with no
    /// member behind it.
    pub destination: Option<&'a str>,
    /// The member's OTPs, in any order.
    pub otps: &'a [Otp],
    /// Sends refused by the send limits.
    pub refusals: &'a [Refusal],
    /// The member's or the destination's delivery-log messages, any order.
    pub messages: &'a [Message],
    /// The member's phone as simulated: its E.164 number and state.
    pub handset: Option<(&'a str, &'a HandsetState)>,
    /// The member's (or the destination's) simulated mailbox.
    pub mailbox: Option<&'a Mailbox>,
    pub carriers: &'a CarrierSet,
    pub profile: &'a SenderProfile,
    /// The address OTP emails come from, which members must allow.
    pub email_from: &'a str,
    pub now: Millis,
    /// `ja` or `en`; the caller resolves the default (the member's locale,
    /// else `en`). Anything but `ja` gives English.
    pub lang: &'a str,
}

/// How much a finding matters. Errors rank before warnings before
/// information.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Something that stops codes from arriving.
    Error,
    /// Something that may explain a missing code.
    Warning,
    /// Nothing wrong; worth telling.
    Info,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

/// The troubleshooting report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub member_id: Option<String>,
    pub lang: String,
    pub generated_at: Millis,
    /// One sentence: the top finding's title, or that nothing is wrong.
    pub summary: String,
    /// Most likely first.
    pub findings: Vec<Finding>,
    /// Everything that happened, oldest first.
    pub timeline: Vec<TimelineEntry>,
    pub registration: Registration,
}

/// One diagnosis with a stable code from [`CODES`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub code: &'static str,
    pub severity: Severity,
    pub title: String,
    /// What happened, to be read to the member.
    pub explanation: String,
    /// What the member should do.
    pub remediation: String,
    /// Newest first.
    pub evidence: Vec<EvidenceRef>,
}

impl Finding {
    /// The time of the newest evidence, which orders findings of one severity.
    pub fn newest(&self) -> Option<Millis> {
        self.evidence.iter().filter_map(|e| e.at).max()
    }
}

/// What a finding rests on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EvidenceRef {
    /// `message`, `event`, `otp`, `handset`, `mailbox`, `member` or `refusal`.
    pub kind: &'static str,
    /// The message, event, OTP or member id; a masked number or address for
    /// a handset, mailbox or refusal.
    pub id: String,
    /// When it happened; for a handset or mailbox, the time it was observed.
    pub at: Option<Millis>,
    /// e.g. `rejected: REJECTD err:101, reason reject_all at 2026-01-01T00:00:05+09:00`.
    pub detail: String,
}

/// One line of the merged timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TimelineEntry {
    pub at: Millis,
    /// `otp_issued`, `otp_superseded`, `otp_expired`, `code_entered`,
    /// `send_refused`, or a delivery-log event kind.
    pub kind: String,
    /// The OTP or message id (a masked destination for a refused send).
    pub subject: String,
    /// A line in the report's language, with the SMPP or SMTP codes.
    pub summary: String,
    pub failure: bool,
}

/// What the member registered, as the desk may show it (masked).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Registration {
    pub locale: Option<String>,
    pub residence: Option<String>,
    /// The notification destination: `sms` or `email`.
    pub destination: Option<String>,
    /// Masked: `090-****-5678`.
    pub phone: Option<String>,
    pub phone_verified: Option<bool>,
    /// Masked: `e***@example.org`.
    pub email: Option<String>,
    /// The phone's carrier, by name in the report's language.
    pub carrier: Option<String>,
    /// The sender the phone shows for OTP SMS: `03-5460-0124` or `22471`.
    pub sms_sender: Option<String>,
    /// The address OTP emails come from.
    pub email_sender: String,
}

/// Every finding code, in catalogue order (which also breaks ranking ties).
pub const CODES: [&str; 23] = [
    "sms_not_registered",
    "sms_outside_japan",
    "sender_id_differs",
    "blocked_by_sms_filter",
    "blocked_by_call_restriction",
    "handset_storage_full",
    "handset_unreachable",
    "roaming_abroad",
    "no_sms_plan",
    "invalid_number",
    "delivery_delayed",
    "delivered_after_expiry",
    "code_expired",
    "code_already_used",
    "superseded_code_entered",
    "too_many_attempts",
    "send_rate_limited",
    "email_unknown_user",
    "email_mailbox_full",
    "email_domain_filter",
    "email_delayed",
    "gateway_error",
    "delivered_ok",
];

/// Diagnoses one case.
pub fn diagnose(case: &Case) -> Report {
    let facts = facts::Facts::new(case);
    let mut findings: Vec<Finding> = rules::RULES.iter().filter_map(|rule| rule(&facts)).collect();
    // `delivered_ok` only when nothing else is wrong: information does not count.
    if findings.iter().all(|f| f.severity == Severity::Info) {
        findings.extend(rules::delivered_ok(&facts));
    }
    rank(&mut findings);
    let summary = match findings.first() {
        Some(top) => top.title.clone(),
        None => facts.lang.pick(
            "登録・コード・配信のいずれにも問題は見つかりませんでした。",
            "No problem found: nothing wrong with the registration, the codes or their delivery.",
        ),
    };
    Report {
        member_id: case.member.map(|m| m.id.clone()),
        lang: facts.lang.code().to_string(),
        generated_at: case.now,
        summary,
        findings,
        timeline: timeline::build(&facts),
        registration: facts.registration(),
    }
}

/// Errors before warnings before information; within a severity the newest
/// evidence first; ties in catalogue order.
fn rank(findings: &mut [Finding]) {
    let order = |code: &str| CODES.iter().position(|c| *c == code).unwrap_or(CODES.len());
    for f in findings.iter_mut() {
        f.evidence
            .sort_by_key(|e| std::cmp::Reverse(e.at.unwrap_or(Millis::MIN)));
    }
    findings.sort_by_key(|f| {
        (
            f.severity,
            std::cmp::Reverse(f.newest().unwrap_or(Millis::MIN)),
            order(f.code),
        )
    });
}

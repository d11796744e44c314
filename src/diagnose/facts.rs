//! What the rules read: the case, with each delivery-log event classified
//! once, the phone's carrier found, the handset's state played forward, and
//! the small formatting helpers every text shares (times, durations, masked
//! numbers, protocol codes).
//!
//! Pure like the rest of the module: the handset's state is judged by the
//! carrier model's own decision with chaos off, which never draws a random
//! number.

use chrono::TimeZone;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::{Case, EvidenceRef, Registration, Severity};
use crate::carrier::{
    self, AbsentCause, Attempt, Carrier, FailureCause, FailureMode, HandsetState, Outcome, SettingKind,
};
use crate::clock::{self, Millis};
use crate::delivery::log::{Event, Message, State};
use crate::member::{self, Channel};
use crate::otp::Otp;

/// The language of the report's texts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lang {
    Ja,
    En,
}

impl Lang {
    pub fn of(lang: &str) -> Lang {
        let lang = lang.trim().to_ascii_lowercase();
        if lang == "ja" || lang.starts_with("ja-") {
            Lang::Ja
        } else {
            Lang::En
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Lang::Ja => "ja",
            Lang::En => "en",
        }
    }

    /// The Japanese or the English text.
    pub fn pick(self, ja: impl Into<String>, en: impl Into<String>) -> String {
        match self {
            Lang::Ja => ja.into(),
            Lang::En => en.into(),
        }
    }
}

/// What one delivery-log event says went wrong (or right).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Problem {
    /// The handset was absent: the network retries (`done` false) or gave
    /// up when the validity ended (EXPIRED).
    Absent {
        cause: Option<AbsentCause>,
        done: bool,
    },
    StorageFull,
    NoSmsPlan,
    /// Unknown subscriber, or a destination the SMSC refused.
    UnknownNumber,
    /// A handset SMS filter; the setting when the log or receipt tells it.
    Filter(Option<SettingKind>),
    CallRestriction,
    /// Throttling, an unreachable gateway or relay, a system failure.
    Gateway {
        done: bool,
    },
    /// On the handset, or in the mailbox's inbox.
    Delivered,
    /// Accepted by the mail server with 250.
    EmailAccepted,
    EmailUnknownUser,
    EmailFull,
    /// Refused (`dropped` false) or silently dropped by the domain allow-list.
    EmailFiltered {
        dropped: bool,
    },
    EmailSpam,
    /// Greylisting or a temporary failure; `done` when retries ran out.
    EmailDeferred {
        done: bool,
    },
}

/// One classified event.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Observation<'a> {
    pub msg: &'a Message,
    /// The event's position in the message's timeline, from 0.
    pub index: usize,
    pub ev: &'a Event,
    pub problem: Problem,
}

/// What the handset's current state does to the next OTP SMS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Predicted {
    Absent(AbsentCause),
    Failed(FailureCause),
    /// Abroad with roaming on: SMS may still be late or lost.
    Roaming,
}

pub(crate) struct Facts<'a> {
    pub case: &'a Case<'a>,
    pub lang: Lang,
    /// The notification destination now.
    pub channel: Option<Channel>,
    /// E.164 of the member's phone or the looked-up number.
    pub phone: Option<String>,
    pub email: Option<String>,
    /// The phone's carrier: the handset's, else the newest SMS's.
    pub carrier: Option<&'a Carrier>,
    /// Codes go (or are about to go) by SMS: the handset's state matters.
    pub sms_in_use: bool,
    /// Codes go by email: the mailbox's state matters.
    pub email_in_use: bool,
    /// Every classified event, messages oldest first.
    pub observations: Vec<Observation<'a>>,
    /// The handset's state, played forward one cause at a time.
    pub predicted: Vec<Predicted>,
    /// The messages, oldest first.
    pub messages: Vec<&'a Message>,
}

impl<'a> Facts<'a> {
    pub fn new(case: &'a Case<'a>) -> Facts<'a> {
        let lang = Lang::of(case.lang);
        let member = case.member;
        let destination = case.destination.map(str::trim).filter(|d| !d.is_empty());
        let dest_is_email = destination.is_some_and(|d| d.contains('@'));
        let phone = member
            .and_then(|m| m.phone.as_ref().map(|p| p.number.clone()))
            .or_else(|| destination.filter(|_| !dest_is_email).map(e164))
            .or_else(|| case.handset.map(|(n, _)| n.to_string()));
        let email = member
            .and_then(|m| m.email.clone())
            .or_else(|| destination.filter(|_| dest_is_email).map(str::to_string))
            .or_else(|| case.mailbox.map(|m| m.address.clone()));
        let channel = match member {
            Some(m) => m.notification,
            None if dest_is_email => Some(Channel::Email),
            None if destination.is_some() => Some(Channel::Sms),
            None => None,
        };
        let mut messages: Vec<&Message> = case.messages.iter().collect();
        messages.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        let carrier = case
            .handset
            .and_then(|(_, h)| case.carriers.get(&h.carrier))
            .or_else(|| {
                messages
                    .iter()
                    .rev()
                    .filter(|m| m.channel == Channel::Sms)
                    .find_map(|m| m.carrier.as_deref().and_then(|c| case.carriers.get(c)))
            });
        let unverified_phone = member.is_some_and(|m| m.phone.as_ref().is_some_and(|p| !p.verified));
        let sms_in_use = channel == Some(Channel::Sms) || unverified_phone;
        let email_in_use = channel == Some(Channel::Email);
        let mut observations = Vec::new();
        for msg in &messages {
            for (index, ev) in msg.events.iter().enumerate() {
                let msg_carrier = msg.carrier.as_deref().and_then(|c| case.carriers.get(c)).or(carrier);
                if let Some(problem) = classify(msg, ev, msg_carrier, case) {
                    observations.push(Observation {
                        msg,
                        index,
                        ev,
                        problem,
                    });
                }
            }
        }
        let predicted = match case.handset {
            Some((_, handset)) => match case.carriers.get(&handset.carrier) {
                Some(c) => predict(c, handset, case),
                None => Vec::new(),
            },
            None => Vec::new(),
        };
        Facts {
            case,
            lang,
            channel,
            phone,
            email,
            carrier,
            sms_in_use,
            email_in_use,
            observations,
            predicted,
            messages,
        }
    }

    /// The sender as the member's phone shows OTP SMS: `03-5460-0124`, or
    /// `22471` on the SoftBank network.
    pub fn shown_sender(&self) -> String {
        let profile = self.case.profile;
        match self.carrier {
            Some(c) => c.displayed_sender(&profile.number, profile),
            None => self.number(),
        }
    }

    /// The sender number as written: `03-5460-0124`.
    pub fn number(&self) -> String {
        carrier::display_number(&self.case.profile.number)
    }

    /// The domain OTP email comes from.
    pub fn mail_domain(&self) -> String {
        domain_of(self.case.email_from).to_ascii_lowercase()
    }

    pub fn masked_phone(&self) -> String {
        self.phone.as_deref().map(member::mask_number).unwrap_or_default()
    }

    pub fn masked_email(&self) -> String {
        self.email.as_deref().map(member::mask_email).unwrap_or_default()
    }

    /// The carrier's name in the report's language.
    pub fn carrier_name(&self, carrier: &Carrier) -> String {
        carrier.name(self.lang.code()).to_string()
    }

    /// A time as the agent reads it: `00:05:12` today (Japan time), else
    /// with the date.
    pub fn when(&self, at: Millis) -> String {
        let tz = clock::jst();
        let (Some(t), Some(now)) = (
            tz.timestamp_millis_opt(at).single(),
            tz.timestamp_millis_opt(self.case.now).single(),
        ) else {
            return clock::rfc3339(at);
        };
        if t.date_naive() == now.date_naive() {
            t.format("%H:%M:%S").to_string()
        } else {
            t.format("%Y-%m-%d %H:%M").to_string()
        }
    }

    /// `45 seconds`, `3 minutes`, `2 hours` (rounded down; whole units).
    pub fn duration(&self, ms: Millis) -> String {
        let s = (ms / 1000).max(0);
        let (n, ja, en) = if s < 120 {
            (s, "秒", "second")
        } else if s < 2 * 3600 {
            (s / 60, "分", "minute")
        } else if s < 48 * 3600 {
            (s / 3600, "時間", "hour")
        } else {
            (s / 86_400, "日", "day")
        };
        let plural = if n == 1 { "" } else { "s" };
        self.lang.pick(format!("{n}{ja}"), format!("{n} {en}{plural}"))
    }

    pub fn otp(&self, id: &str) -> Option<&'a Otp> {
        self.case.otps.iter().find(|o| o.id == id)
    }

    /// The observations whose problem `keep` accepts.
    pub fn observed(&self, keep: impl Fn(&Problem) -> bool) -> Vec<Observation<'a>> {
        self.observations.iter().filter(|o| keep(&o.problem)).copied().collect()
    }

    /// The first arrival on `channel` after `after`, if a later code got through.
    pub fn later_arrival(&self, channel: Channel, after: Millis) -> Option<Millis> {
        self.messages
            .iter()
            .filter(|m| m.channel == channel)
            .filter_map(|m| arrived_at(m))
            .filter(|at| *at > after)
            .min()
    }

    /// The severity of a failure seen in the log: an error, unless a later
    /// code on the same channel arrived, which makes it a warning with a
    /// note saying so.
    pub fn failure_severity(&self, channel: Channel, observed: &[Observation]) -> (Severity, String) {
        let newest = observed.iter().map(|o| o.ev.at).max().unwrap_or(Millis::MIN);
        match self.later_arrival(channel, newest) {
            Some(at) => (
                Severity::Warning,
                self.lang.pick(
                    format!("ただし、その後 {} に送ったコードは届いています。", self.when(at)),
                    format!(
                        " A later code did arrive, at {}, so this may be fixed already.",
                        self.when(at)
                    ),
                ),
            ),
            None => (Severity::Error, String::new()),
        }
    }

    pub fn event_evidence(&self, o: &Observation) -> EvidenceRef {
        let id = if o.ev.id.is_empty() {
            format!("{}.{}", o.msg.id, o.index + 1)
        } else {
            o.ev.id.clone()
        };
        EvidenceRef {
            kind: "event",
            id,
            at: Some(o.ev.at),
            detail: event_detail(o.ev),
        }
    }

    pub fn message_evidence(&self, msg: &Message, detail: String) -> EvidenceRef {
        EvidenceRef {
            kind: "message",
            id: msg.id.clone(),
            at: Some(msg.created_at),
            detail,
        }
    }

    /// The handset's state, observed now.
    pub fn handset_evidence(&self, detail: &str) -> EvidenceRef {
        let (number, carrier) = match self.case.handset {
            Some((n, h)) => (member::mask_number(n), h.carrier.clone()),
            None => (self.masked_phone(), String::new()),
        };
        EvidenceRef {
            kind: "handset",
            id: number,
            at: Some(self.case.now),
            detail: format!(
                "{carrier} handset: {detail}, observed at {}",
                clock::rfc3339(self.case.now)
            ),
        }
    }

    /// The mailbox's state, observed now.
    pub fn mailbox_evidence(&self, detail: &str) -> EvidenceRef {
        let address = self.case.mailbox.map(|m| m.address.as_str()).or(self.email.as_deref());
        EvidenceRef {
            kind: "mailbox",
            id: address.map(member::mask_email).unwrap_or_default(),
            at: Some(self.case.now),
            detail: format!("{detail}, observed at {}", clock::rfc3339(self.case.now)),
        }
    }

    pub fn member_evidence(&self, detail: String) -> EvidenceRef {
        EvidenceRef {
            kind: "member",
            id: self.case.member.map(|m| m.id.clone()).unwrap_or_default(),
            at: None,
            detail,
        }
    }

    pub fn otp_evidence(&self, otp: &Otp, at: Millis, detail: String) -> EvidenceRef {
        EvidenceRef {
            kind: "otp",
            id: otp.id.clone(),
            at: Some(at),
            detail: format!("{detail} at {}", clock::rfc3339(at)),
        }
    }

    /// The registration as the desk shows it, masked.
    pub fn registration(&self) -> Registration {
        let member = self.case.member;
        Registration {
            locale: member.map(|m| m.locale.clone()),
            residence: member.map(|m| m.residence.clone()),
            destination: self.channel.map(|c| c.as_str().to_string()),
            phone: self.phone.as_deref().map(member::mask_number),
            phone_verified: member.and_then(|m| m.phone.as_ref().map(|p| p.verified)),
            email: self.email.as_deref().map(member::mask_email),
            carrier: self.carrier.map(|c| self.carrier_name(c)),
            sms_sender: self.phone.as_ref().map(|_| self.shown_sender()),
            email_sender: self.case.email_from.to_string(),
        }
    }

    /// The phone's carrier words for texts: `NTT docomo` or a neutral word.
    pub fn carrier_words(&self, carrier: Option<&Carrier>) -> String {
        match carrier {
            Some(c) => self.carrier_name(c),
            None => self.lang.pick("ご契約の携帯電話会社", "your mobile carrier"),
        }
    }
}

/// A number in any spelling as E.164 when it is Japanese, else as given.
fn e164(number: &str) -> String {
    match member::national_number(number) {
        Some(n) => format!("+81{}", &n[1..]),
        None => number.to_string(),
    }
}

pub(crate) fn domain_of(address: &str) -> &str {
    address.rsplit_once('@').map(|(_, d)| d).unwrap_or(address).trim()
}

/// When the message reached the handset or the inbox (the spam folder does
/// not count), if it did.
pub(crate) fn arrived_at(msg: &Message) -> Option<Millis> {
    let delivered = msg.events.iter().find(|e| {
        (e.kind == "delivered" && e.reason.as_deref() != Some("spam_folder"))
            || (e.kind == "receipt" && e.stat.as_deref() == Some("DELIVRD"))
    });
    if let Some(e) = delivered {
        return Some(e.at);
    }
    // A real relay answers 250 and says no more; the embedded server also
    // reports what the mailbox did, which then decides.
    let mailbox_said = msg
        .events
        .iter()
        .any(|e| matches!(e.kind.as_str(), "delivered" | "dropped" | "refused" | "deferred"));
    let accepted = msg.events.iter().find(|e| e.kind == "smtp_accepted");
    match accepted {
        Some(e) if msg.channel == Channel::Email && !mailbox_said && !failed_state(msg.state) => Some(e.at),
        _ => None,
    }
}

/// When the message was delivered anywhere (the spam folder included).
pub(crate) fn delivered_at(msg: &Message) -> Option<Millis> {
    msg.events
        .iter()
        .find(|e| e.kind == "delivered" || (e.kind == "receipt" && e.stat.as_deref() == Some("DELIVRD")))
        .map(|e| e.at)
}

/// When the message was handed to the SMSC or the mail server.
pub(crate) fn submitted_at(msg: &Message) -> Millis {
    msg.events
        .iter()
        .filter(|e| matches!(e.kind.as_str(), "smsc_accepted" | "submitted" | "smtp_accepted"))
        .map(|e| e.at)
        .min()
        .unwrap_or(msg.created_at)
}

fn failed_state(state: State) -> bool {
    matches!(state, State::Failed | State::Rejected | State::Expired)
}

fn absent_cause(code: Option<&str>) -> Option<AbsentCause> {
    match code? {
        "powered_off" => Some(AbsentCause::PoweredOff),
        "no_coverage" => Some(AbsentCause::NoCoverage),
        "abroad_no_roaming" => Some(AbsentCause::AbroadNoRoaming),
        _ => None,
    }
}

/// The cause of the newest absent retry of a message.
pub(crate) fn last_absent_cause(msg: &Message) -> Option<AbsentCause> {
    msg.events
        .iter()
        .rev()
        .filter(|e| e.kind == "retry_scheduled")
        .find_map(|e| absent_cause(e.reason.as_deref()))
}

fn problem_of_cause(cause: FailureCause) -> Problem {
    match cause {
        FailureCause::StorageFull => Problem::StorageFull,
        FailureCause::NoSmsPlan => Problem::NoSmsPlan,
        FailureCause::UnknownSubscriber => Problem::UnknownNumber,
        FailureCause::CallRestriction => Problem::CallRestriction,
        FailureCause::ChaosFailure => Problem::Gateway { done: true },
        FailureCause::RejectAll
        | FailureCause::BlockedSender
        | FailureCause::RejectOtherDomestic
        | FailureCause::ContentFilter => Problem::Filter(cause.setting()),
    }
}

/// What an SMPP receipt's `stat` and `err` stand for, on the message's
/// carrier or, failing that, on any carrier that knows the pair.
fn problem_of_receipt(msg: &Message, ev: &Event, carrier: Option<&Carrier>, case: &Case) -> Option<Problem> {
    let stat = ev.stat.as_deref()?;
    match stat {
        "DELIVRD" => return Some(Problem::Delivered),
        "EXPIRED" => {
            return Some(Problem::Absent {
                cause: last_absent_cause(msg),
                done: true,
            })
        }
        "ENROUTE" | "ACCEPTD" | "UNKNOWN" => return None,
        _ => {}
    }
    let err: Option<u16> = ev.err.as_deref().and_then(|e| e.trim().parse().ok());
    let mode = err.and_then(|err| {
        carrier
            .and_then(|c| c.failure_mode_of(stat, err))
            .or_else(|| case.carriers.all().iter().find_map(|c| c.failure_mode_of(stat, err)))
    });
    Some(match mode {
        Some(FailureMode::AbsentSubscriber) => Problem::Absent {
            cause: last_absent_cause(msg),
            done: true,
        },
        Some(FailureMode::UnknownSubscriber) => Problem::UnknownNumber,
        Some(FailureMode::MemoryCapacityExceeded) => Problem::StorageFull,
        Some(FailureMode::TeleserviceNotProvisioned) => Problem::NoSmsPlan,
        Some(FailureMode::CallBarred) => Problem::CallRestriction,
        Some(FailureMode::FilterRejection) => Problem::Filter(None),
        Some(FailureMode::ContentFilter) => Problem::Filter(Some(SettingKind::ContentFilter)),
        Some(FailureMode::SystemFailure) => Problem::Gateway { done: true },
        None if stat == "REJECTD" => Problem::Filter(None),
        None => Problem::Gateway { done: true },
    })
}

fn problem_of_smtp_refusal(ev: &Event) -> Problem {
    match ev.reason.as_deref() {
        Some("unknown_user") => Problem::EmailUnknownUser,
        Some("mailbox_full") => Problem::EmailFull,
        Some("domain_filter") => Problem::EmailFiltered { dropped: false },
        Some(_) => Problem::Gateway { done: true },
        None => match ev.smtp_code {
            Some(452 | 552) => Problem::EmailFull,
            Some(550) if smtp_enhanced(ev).starts_with("5.1.") => Problem::EmailUnknownUser,
            Some(550 | 554) if smtp_enhanced(ev).starts_with("5.7.") => Problem::EmailFiltered { dropped: false },
            _ => Problem::Gateway { done: true },
        },
    }
}

/// Classifies one event of a message (see `src/sim/sms.rs`,
/// `src/delivery/outbound.rs` for what writes them).
fn classify(msg: &Message, ev: &Event, carrier: Option<&Carrier>, case: &Case) -> Option<Problem> {
    let done = ev.state.is_some_and(failed_state);
    Some(match ev.kind.as_str() {
        "retry_scheduled" => Problem::Absent {
            cause: absent_cause(ev.reason.as_deref()),
            done: false,
        },
        "expired" => Problem::Absent {
            cause: last_absent_cause(msg),
            done: true,
        },
        "receipt" => return problem_of_receipt(msg, ev, carrier, case),
        // The sending side never sent the rest: not the member's phone.
        "incomplete" => Problem::Gateway { done: true },
        "failed" | "rejected" => match ev.reason.as_deref().and_then(FailureCause::from_code) {
            Some(cause) => problem_of_cause(cause),
            None => match problem_of_receipt(msg, ev, carrier, case) {
                Some(p) => p,
                None => Problem::Gateway { done: true },
            },
        },
        "submit_refused" => {
            let status = ev.command_status.as_deref().map(|s| s.to_ascii_lowercase());
            // 0x0B: invalid destination address.
            if status.as_deref() == Some("0x0000000b") {
                Problem::UnknownNumber
            } else {
                Problem::Gateway { done }
            }
        }
        // Not done while a retry is pending (throttled, no bind up).
        "submit_failed" | "send_failed" => Problem::Gateway { done },
        "smtp_unreachable" => Problem::Gateway { done },
        "delivered" if ev.reason.as_deref() == Some("spam_folder") => Problem::EmailSpam,
        "delivered" => Problem::Delivered,
        "smtp_accepted" => Problem::EmailAccepted,
        "smtp_rejected" | "refused" => problem_of_smtp_refusal(ev),
        "smtp_deferred" | "deferred" => {
            if ev.smtp_code == Some(452) || ev.reason.as_deref() == Some("mailbox_full") {
                Problem::EmailFull
            } else {
                Problem::EmailDeferred { done }
            }
        }
        "dropped" => Problem::EmailFiltered { dropped: true },
        _ => return None,
    })
}

/// The handset's state played forward: each cause that would stop the next
/// OTP SMS, in the network's order, found by clearing one and asking again.
fn predict(carrier: &Carrier, handset: &HandsetState, case: &Case) -> Vec<Predicted> {
    let profile = case.profile;
    let mut state = handset.clone();
    let mut out = Vec::new();
    // Chaos off: the decision never draws, so the generator is a formality.
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    for _ in 0..12 {
        let attempt = Attempt {
            handset: &state,
            source: &profile.number,
            source_is_domestic_other_carrier: true,
            text: "",
            chaos: false,
        };
        match carrier.decide(&attempt, profile, &mut rng) {
            Outcome::Delivered { .. } => break,
            Outcome::Absent { cause } => {
                out.push(Predicted::Absent(cause));
                match cause {
                    AbsentCause::PoweredOff => state.powered_on = true,
                    AbsentCause::NoCoverage => state.in_coverage = true,
                    AbsentCause::AbroadNoRoaming => state.roaming = true,
                }
            }
            Outcome::Failed { cause, .. } => {
                out.push(Predicted::Failed(cause));
                match cause {
                    FailureCause::StorageFull => state.storage_full = false,
                    FailureCause::NoSmsPlan => state.sms_plan = true,
                    FailureCause::RejectAll => state.filters.reject_all = false,
                    FailureCause::BlockedSender => state.filters.blocked_senders.clear(),
                    FailureCause::RejectOtherDomestic => state.filters.reject_other_domestic = false,
                    FailureCause::ContentFilter => state.filters.content_filter = false,
                    FailureCause::CallRestriction => state.call_restriction = false,
                    FailureCause::UnknownSubscriber => state.in_service = true,
                    FailureCause::ChaosFailure => break,
                }
            }
        }
    }
    if handset.abroad && handset.roaming {
        out.push(Predicted::Roaming);
    }
    out
}

/// The enhanced status of an SMTP reply (`5.1.1`), or "".
fn smtp_enhanced(ev: &Event) -> &str {
    let Some(reply) = ev.smtp_reply.as_deref() else {
        return "";
    };
    let second = reply.split_whitespace().nth(1).unwrap_or("");
    let looks_enhanced = second.split('.').count() == 3 && second.chars().all(|c| c.is_ascii_digit() || c == '.');
    if looks_enhanced {
        second
    } else {
        ""
    }
}

/// The protocol codes of an event: `REJECTD err:101, network_error_code
/// 3:13, command_status 0x00000058, SMTP 550 5.1.1`. Free reply texts are
/// left out: they may quote a full address.
pub(crate) fn protocol_codes(ev: &Event) -> String {
    let mut parts = Vec::new();
    match (&ev.stat, &ev.err) {
        (Some(stat), Some(err)) => parts.push(format!("{stat} err:{err}")),
        (Some(stat), None) => parts.push(stat.clone()),
        (None, Some(err)) => parts.push(format!("err:{err}")),
        (None, None) => {}
    }
    if let Some(nec) = &ev.network_error_code {
        parts.push(format!("network_error_code {nec}"));
    }
    if let Some(status) = &ev.command_status {
        parts.push(format!("command_status {status}"));
    }
    if let Some(code) = ev.smtp_code {
        let enhanced = smtp_enhanced(ev);
        if enhanced.is_empty() {
            parts.push(format!("SMTP {code}"));
        } else {
            parts.push(format!("SMTP {code} {enhanced}"));
        }
    }
    parts.join(", ")
}

/// `rejected: REJECTD err:101, reason reject_all at 2026-01-01T00:00:05+09:00`.
pub(crate) fn event_detail(ev: &Event) -> String {
    let mut detail = ev.kind.clone();
    let codes = protocol_codes(ev);
    if !codes.is_empty() {
        detail.push_str(": ");
        detail.push_str(&codes);
    }
    if let Some(reason) = &ev.reason {
        detail.push_str(if codes.is_empty() { ": reason " } else { ", reason " });
        detail.push_str(reason);
    }
    detail.push_str(" at ");
    detail.push_str(&clock::rfc3339(ev.at));
    detail
}

/// A log reason in words.
pub(crate) fn reason_words(lang: Lang, reason: &str) -> String {
    let (ja, en) = match reason {
        "powered_off" => ("電源が切れている", "the phone is switched off"),
        "no_coverage" => ("圏外", "the phone is out of coverage"),
        "abroad_no_roaming" => ("海外でローミングがオフ", "the phone is abroad with roaming off"),
        "storage_full" => ("SMSの保存容量がいっぱい", "the phone's message storage is full"),
        "no_sms_plan" => (
            "SMSが使えない回線（データ専用SIM）",
            "the line has no SMS service (data-only SIM)",
        ),
        "unknown_subscriber" => ("存在しない番号", "no subscriber has this number"),
        "reject_all" => ("すべてのSMSを拒否する設定", "the phone rejects all SMS"),
        "blocked_sender" => (
            "送信元が拒否リストに登録されている",
            "the sender is on the phone's block list",
        ),
        "reject_other_domestic" => (
            "国内他事業者からのSMSを拒否する設定",
            "the phone rejects SMS from other domestic operators",
        ),
        "content_filter" => ("携帯電話会社の迷惑SMSフィルター", "the carrier's spam SMS filter"),
        "call_restriction" => ("送信元番号の着信拒否", "calls from the sender's number are blocked"),
        "chaos_failure" => ("ネットワークのシステム障害", "a network system failure"),
        "throttled" => ("送信量の制限（スロットリング）", "throttled"),
        "smsc_queue_full" => ("SMSCの送信待ちがいっぱい", "the SMSC's queue was full"),
        "smsc_refused" => ("SMSCが受け付けなかった", "the SMSC refused it"),
        "gateway_unreachable" => ("SMSゲートウェイに接続できない", "the SMS gateway could not be reached"),
        "no_smsc_configured" => ("SMSゲートウェイが未設定", "no SMS gateway is configured"),
        "no_smtp_relay_configured" => ("メールの送信経路が未設定", "no mail relay is configured"),
        "relay_unreachable" => ("メールサーバーに接続できない", "the mail relay could not be reached"),
        "validity_period_ended" => ("有効期間の終了", "the validity period ended"),
        "long_message_incomplete" => (
            "長いメッセージの一部が送信元から届かなかった",
            "parts of the long message never came from the sender",
        ),
        "unknown_user" => ("宛先のメールアドレスが存在しない", "the address does not exist"),
        "mailbox_full" => ("メールボックスがいっぱい", "the mailbox is full"),
        "domain_filter" => ("ドメイン指定受信で拒否", "the domain filter (指定受信)"),
        "message_too_large" => ("メールが大きすぎる", "the message is too large"),
        "smtp_refused" => ("メールサーバーが拒否", "the mail server refused it"),
        "greylisted" => ("グレイリスティング", "greylisting"),
        "temporary_failure" => ("一時的なエラー", "a temporary failure"),
        "spam_folder" => ("迷惑メールフォルダーに振り分け", "put in the spam folder"),
        other => (other, other),
    };
    lang.pick(ja, en)
}

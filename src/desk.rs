//! The troubleshooting desk: gathers everything known about a member (or a
//! destination with no member) from the stores and hands it to the pure
//! `diagnose` rules. The HTTP API, the console and `otpgate diagnose` all
//! ask here, so they always tell the same story.

use std::sync::Arc;

use crate::carrier::{CarrierSet, HandsetState, SenderProfile};
use crate::clock::Millis;
use crate::delivery::log::{DeliveryLog, Message, Query};
use crate::diagnose::{self, Case, Report};
use crate::member::{self, Member};
use crate::otp::Otp;
use crate::service::{OtpService, Refusal, ServiceError};
use crate::sim::sms::SmscIds;
use crate::sim::World;
use crate::smtp::MailWorld;
use crate::smtp::Mailbox;

#[derive(Clone)]
pub struct Desk {
    pub service: OtpService,
    pub log: DeliveryLog,
    pub world: World,
    pub mail: MailWorld,
    pub carriers: Arc<CarrierSet>,
    pub profile: SenderProfile,
    pub email_from: String,
    /// Resolves the ids the SMSC gave ESMEs, for a search by one.
    pub smsc_ids: SmscIds,
}

/// What a lookup found: a member, or only a destination.
pub enum Subject {
    Member(Member),
    Destination(String),
}

impl Subject {
    /// The member's id, or the destination.
    pub fn name(&self) -> String {
        match self {
            Subject::Member(m) => m.id.clone(),
            Subject::Destination(d) => d.clone(),
        }
    }
}

impl Desk {
    fn messages(&self, q: Query) -> Result<Vec<Message>, ServiceError> {
        Ok(self.log.query(&Query { limit: 1000, ..q })?.0)
    }

    /// Finds who a support agent means: a member id, a phone number in any
    /// spelling, an email address, or a message id: the delivery log's,
    /// the one the SMSC gave an ESME (in its `submit_sm_resp`, a receipt,
    /// a log line; a long message's by any part's) or the one the SMTP
    /// server gave a client (`250 ... queued as`). An id naming messages to
    /// several destinations (a `submit_multi`'s, a mail's to several
    /// recipients) is a `Conflict` that names them; [`Desk::lookup_all`]
    /// gives each.
    pub fn lookup(&self, text: &str) -> Result<Subject, ServiceError> {
        let mut found = self.lookup_all(text)?;
        if found.len() == 1 {
            return Ok(found.remove(0));
        }
        let names: Vec<String> = found.iter().map(Subject::name).collect();
        Err(ServiceError::Conflict(format!(
            "message id {} names messages to {} destinations; look up one of them: {}",
            text.trim(),
            names.len(),
            names.join(", ")
        )))
    }

    /// [`Desk::lookup`], with every destination a message id names (one,
    /// or several, newest first); never empty.
    pub fn lookup_all(&self, text: &str) -> Result<Vec<Subject>, ServiceError> {
        let text = text.trim();
        if let Ok(m) = self.service.member(text) {
            return Ok(vec![Subject::Member(m)]);
        }
        if text.contains('@') {
            return Ok(vec![self.destination(text)?]);
        }
        if let [one] = self.service.find_members(Some(text), None)?.as_slice() {
            return Ok(vec![Subject::Member(one.clone())]);
        }
        let mobile = member::parse_mobile(text);
        if mobile.is_err() && !text.is_empty() {
            let sent = self.sent_under(text)?;
            if !sent.is_empty() {
                return Ok(sent);
            }
        }
        match mobile {
            Ok(e164) => Ok(vec![Subject::Destination(e164)]),
            Err(e) => Err(e.into()),
        }
    }

    /// The one member registered with a phone number or email address,
    /// else the destination itself (an address in lower case).
    fn destination(&self, to: &str) -> Result<Subject, ServiceError> {
        let email = to.contains('@');
        let (phone, address) = if email { (None, Some(to)) } else { (Some(to), None) };
        if let [one] = self.service.find_members(phone, address)?.as_slice() {
            return Ok(Subject::Member(one.clone()));
        }
        Ok(Subject::Destination(if email {
            to.trim().to_ascii_lowercase()
        } else {
            to.to_string()
        }))
    }

    /// Who the messages a message id names went to: their member where
    /// the OTP core sent them (and the member is still there), else their
    /// destination; each once, newest message first. Empty for an id
    /// nothing knows.
    fn sent_under(&self, id: &str) -> Result<Vec<Subject>, ServiceError> {
        let messages = match self.log.get(id)? {
            Some(m) => vec![m],
            None => self.messages(Query {
                smsc_message_ids: Some(self.smsc_ids.named(id)?),
                ..Query::default()
            })?,
        };
        let mut found = Vec::new();
        for m in messages {
            found.push(match m.member_id.as_deref().map(|id| self.service.member(id)) {
                Some(Ok(member)) => Subject::Member(member),
                // A handset's own message to an ESME: the phone is who it is about.
                _ if m.origin == crate::sim::sms::HANDSET_ORIGIN => self.destination(&m.from)?,
                _ => self.destination(&m.to)?,
            });
        }
        if found.is_empty() {
            for to in self.mail.recipients(id)?.unwrap_or_default() {
                found.push(self.destination(&to)?);
            }
        }
        let mut subjects: Vec<Subject> = Vec::new();
        for subject in found {
            if !subjects.iter().any(|s| s.name() == subject.name()) {
                subjects.push(subject);
            }
        }
        Ok(subjects)
    }

    pub fn report(&self, subject: &Subject, lang: Option<&str>, now: Millis) -> Result<Report, ServiceError> {
        Ok(self.diagnose(&self.dossier(subject)?, lang, now))
    }

    /// Everything known about the subject, as the rules and the report's
    /// detail sections see it.
    pub fn dossier(&self, subject: &Subject) -> Result<Dossier, ServiceError> {
        match subject {
            Subject::Member(member) => {
                // The member's own OTP messages, and whatever else reached
                // their phone or address (a QA application's SMS or mail).
                let mut messages = self.messages(Query {
                    member_id: Some(member.id.clone()),
                    ..Query::default()
                })?;
                for to in member
                    .phone
                    .iter()
                    .map(|p| p.number.clone())
                    .chain(member.email.iter().cloned())
                {
                    for m in self.messages(Query {
                        to: Some(to),
                        ..Query::default()
                    })? {
                        if !messages.iter().any(|known| known.id == m.id) {
                            messages.push(m);
                        }
                    }
                }
                messages.sort_by(|a, b| b.id.cmp(&a.id));
                let phone = member.phone.as_ref().map(|p| p.number.clone());
                let handset = self.numbered_handset(phone.as_deref())?;
                Ok(Dossier {
                    otps: self.service.otps_of(&member.id)?,
                    refusals: self.service.refusals_of(&member.id)?,
                    messages,
                    handset,
                    mailbox: member.email.as_deref().and_then(|e| self.mail.get_mailbox(e).ok()),
                    member: Some(member.clone()),
                    destination: None,
                })
            }
            Subject::Destination(destination) => {
                let is_email = destination.contains('@');
                let messages = self.messages(Query {
                    to: Some(destination.clone()),
                    ..Query::default()
                })?;
                Ok(Dossier {
                    member: None,
                    destination: Some(destination.clone()),
                    otps: Vec::new(),
                    refusals: Vec::new(),
                    handset: if is_email {
                        None
                    } else {
                        self.numbered_handset(Some(destination))?
                    },
                    messages,
                    mailbox: if is_email {
                        self.mail.get_mailbox(destination).ok()
                    } else {
                        None
                    },
                })
            }
        }
    }

    /// The handset a number has in the simulation: the one put for it, else,
    /// once the log has a message to it, the default handset the message
    /// went to (never stored); `None` for a number nothing was sent to. The
    /// API, the console and the reports all ask here.
    pub fn handset(&self, number: &str) -> Result<Option<HandsetState>, ServiceError> {
        if let Some(h) = self.world.handset(number)? {
            return Ok(Some(h));
        }
        let sent_to = Query {
            to: Some(number.to_string()),
            limit: 1,
            ..Query::default()
        };
        let (messages, _) = self.log.query(&sent_to)?;
        if messages.is_empty() {
            return Ok(None);
        }
        Ok(Some(self.world.handset_or_default(number)?))
    }

    fn numbered_handset(&self, number: Option<&str>) -> Result<Option<(String, HandsetState)>, ServiceError> {
        match number {
            Some(n) => Ok(self.handset(n)?.map(|h| (n.to_string(), h))),
            None => Ok(None),
        }
    }

    /// Runs the rules over a dossier, in `lang` (else the member's language).
    pub fn diagnose(&self, d: &Dossier, lang: Option<&str>, now: Millis) -> Report {
        let lang = resolve_lang(lang, d.member.as_ref().map(|m| m.locale.as_str()));
        let case = Case {
            member: d.member.as_ref(),
            destination: d.destination.as_deref(),
            otps: &d.otps,
            refusals: &d.refusals,
            messages: &d.messages,
            handset: d.handset.as_ref().map(|(n, h)| (n.as_str(), h)),
            mailbox: d.mailbox.as_ref(),
            carriers: &self.carriers,
            profile: &self.profile,
            email_from: &self.email_from,
            now,
            lang: &lang,
        };
        diagnose::diagnose(&case)
    }
}

/// What the desk knows about one member or destination.
pub struct Dossier {
    pub member: Option<Member>,
    pub destination: Option<String>,
    pub otps: Vec<Otp>,
    pub refusals: Vec<Refusal>,
    pub messages: Vec<Message>,
    pub handset: Option<(String, HandsetState)>,
    pub mailbox: Option<Mailbox>,
}

/// `ja` or `en`: the asked language, else the member's, else English.
pub fn resolve_lang(asked: Option<&str>, locale: Option<&str>) -> String {
    match asked.or(locale) {
        Some(l) if l.eq_ignore_ascii_case("ja") => "ja".into(),
        _ => "en".into(),
    }
}

//! The troubleshooting desk: gathers everything known about a member (or a
//! destination with no member) from the stores and hands it to the pure
//! `diagnose` rules. The HTTP API, the console and `otpgate diagnose` all
//! ask here, so they always tell the same story.

use std::sync::Arc;

use crate::carrier::{CarrierSet, SenderProfile};
use crate::clock::Millis;
use crate::delivery::log::{DeliveryLog, Message, Query};
use crate::diagnose::{self, Case, Report};
use crate::member::{self, Member};
use crate::service::{OtpService, ServiceError};
use crate::sim::World;
use crate::smtp::MailWorld;

#[derive(Clone)]
pub struct Desk {
    pub service: OtpService,
    pub log: DeliveryLog,
    pub world: World,
    pub mail: MailWorld,
    pub carriers: Arc<CarrierSet>,
    pub profile: SenderProfile,
    pub email_from: String,
}

/// What a lookup found: a member, or only a destination.
pub enum Subject {
    Member(Member),
    Destination(String),
}

impl Desk {
    fn messages(&self, q: Query) -> Result<Vec<Message>, ServiceError> {
        Ok(self.log.query(&Query { limit: 1000, ..q })?.0)
    }

    /// Finds who a support agent means: a member id, a phone number in any spelling, or an email address.
    pub fn lookup(&self, text: &str) -> Result<Subject, ServiceError> {
        let text = text.trim();
        if let Ok(m) = self.service.member(text) {
            return Ok(Subject::Member(m));
        }
        let (phone, email) = if text.contains('@') {
            (None, Some(text))
        } else {
            (Some(text), None)
        };
        let found = self.service.find_members(phone, email)?;
        if let [one] = found.as_slice() {
            return Ok(Subject::Member(one.clone()));
        }
        if let Some(e) = email {
            return Ok(Subject::Destination(e.to_ascii_lowercase()));
        }
        match member::parse_mobile(text) {
            Ok(e164) => Ok(Subject::Destination(e164)),
            Err(e) => Err(e.into()),
        }
    }

    pub fn report(&self, subject: &Subject, lang: Option<&str>, now: Millis) -> Result<Report, ServiceError> {
        match subject {
            Subject::Member(m) => self.member_report(m, lang, now),
            Subject::Destination(d) => self.destination_report(d, lang, now),
        }
    }

    pub fn member_report(&self, member: &Member, lang: Option<&str>, now: Millis) -> Result<Report, ServiceError> {
        let otps = self.service.otps_of(&member.id)?;
        let refusals = self.service.refusals_of(&member.id)?;
        // The member's own OTP messages, and whatever else reached their
        // phone or address (a QA application's SMS or mail).
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
        let phone = member.phone.as_ref().map(|p| p.number.as_str());
        let lang = resolve_lang(lang, Some(&member.locale));
        self.diagnose(
            Some(member),
            None,
            &otps,
            &refusals,
            &messages,
            (phone, member.email.as_deref()),
            &lang,
            now,
        )
    }

    pub fn destination_report(
        &self,
        destination: &str,
        lang: Option<&str>,
        now: Millis,
    ) -> Result<Report, ServiceError> {
        let messages = self.messages(Query {
            to: Some(destination.to_string()),
            ..Query::default()
        })?;
        let is_email = destination.contains('@');
        let (phone, email) = if is_email {
            (None, Some(destination))
        } else {
            (Some(destination), None)
        };
        let lang = resolve_lang(lang, None);
        self.diagnose(None, Some(destination), &[], &[], &messages, (phone, email), &lang, now)
    }

    /// Reads the handset and mailbox of the destinations and runs the rules.
    #[allow(clippy::too_many_arguments)]
    fn diagnose(
        &self,
        member: Option<&Member>,
        destination: Option<&str>,
        otps: &[crate::otp::Otp],
        refusals: &[crate::service::Refusal],
        messages: &[Message],
        (phone, email): (Option<&str>, Option<&str>),
        lang: &str,
        now: Millis,
    ) -> Result<Report, ServiceError> {
        let handset = match phone {
            Some(n) => self.world.handset(n)?.map(|h| (n.to_string(), h)),
            None => None,
        };
        let mailbox = email.and_then(|e| self.mail.get_mailbox(e).ok());
        let case = Case {
            member,
            destination,
            otps,
            refusals,
            messages,
            handset: handset.as_ref().map(|(n, h)| (n.as_str(), h)),
            mailbox: mailbox.as_ref(),
            carriers: &self.carriers,
            profile: &self.profile,
            email_from: &self.email_from,
            now,
            lang,
        };
        Ok(diagnose::diagnose(&case))
    }
}

/// `ja` or `en`: the asked language, else the member's, else English.
pub fn resolve_lang(asked: Option<&str>, locale: Option<&str>) -> String {
    match asked.or(locale) {
        Some(l) if l.eq_ignore_ascii_case("ja") => "ja".into(),
        _ => "en".into(),
    }
}

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
        let messages = self.messages(Query {
            member_id: Some(member.id.clone()),
            ..Query::default()
        })?;
        let handset = match &member.phone {
            Some(p) => self.world.handset(&p.number)?.map(|h| (p.number.clone(), h)),
            None => None,
        };
        let mailbox = match &member.email {
            Some(e) => self.mail.get_mailbox(e).ok(),
            None => None,
        };
        let lang = resolve_lang(lang, Some(&member.locale));
        let case = Case {
            member: Some(member),
            destination: None,
            otps: &otps,
            refusals: &refusals,
            messages: &messages,
            handset: handset.as_ref().map(|(n, h)| (n.as_str(), h)),
            mailbox: mailbox.as_ref(),
            carriers: &self.carriers,
            profile: &self.profile,
            email_from: &self.email_from,
            now,
            lang: &lang,
        };
        Ok(diagnose::diagnose(&case))
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
        let handset = if destination.contains('@') {
            None
        } else {
            self.world.handset(destination)?.map(|h| (destination.to_string(), h))
        };
        let mailbox = if destination.contains('@') {
            self.mail.get_mailbox(destination).ok()
        } else {
            None
        };
        let lang = resolve_lang(lang, None);
        let case = Case {
            member: None,
            destination: Some(destination),
            otps: &[],
            refusals: &[],
            messages: &messages,
            handset: handset.as_ref().map(|(n, h)| (n.as_str(), h)),
            mailbox: mailbox.as_ref(),
            carriers: &self.carriers,
            profile: &self.profile,
            email_from: &self.email_from,
            now,
            lang: &lang,
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

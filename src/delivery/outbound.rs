//! The OTP core's outbound side: hands each OTP message to the SMS channel
//! (an SMPP client) or the email channel (an SMTP client) and turns what the
//! protocol answers into delivery-log events.
//!
//! The plain code lives only in the message handed to the channel and, for
//! an email retry, in memory until the retry; it is never stored or logged.

use std::sync::Arc;

use futures::future::BoxFuture;

use crate::clock::{Clock, Millis};
use crate::delivery::email::{self, EmailClientConfig, OutgoingEmail, SendOutcome};
use crate::delivery::log::{DeliveryLog, Event, State};
use crate::delivery::sms::{IncomingReceipt, OutgoingSms, ReceiptSink, SmsClient, SmsError};
use crate::member::Channel;
use crate::recent::Recent;
use crate::service::{sms_text, SendJob, Sender};

/// How long a greylisted or deferred email waits before the next try.
const EMAIL_RETRY_MS: Millis = 300_000;
/// Tries of one email in all.
const EMAIL_TRIES: u32 = 5;

/// How long an SMS the SMSC turned away for now (ESME_RTHROTTLED,
/// ESME_RMSGQFUL, or no bind up while the client reconnects) waits before
/// its second try; each later wait is twice the one before.
const SMS_RETRY_FIRST_MS: Millis = 2_000;
/// Tries of one SMS in all: the waits are 2, 4, 8 and 16 s.
const SMS_TRIES: u32 = 5;

/// When the try after try `attempt` (from 1) of an SMS goes, or `None` when
/// it would be one too many or the code would have expired by then.
fn sms_retry_at(now: Millis, attempt: u32, expires_at: Millis) -> Option<Millis> {
    if attempt >= SMS_TRIES {
        return None;
    }
    let next = now + (SMS_RETRY_FIRST_MS << (attempt - 1).min(16));
    (next < expires_at).then_some(next)
}

/// Why a message that could have been retried fails instead.
fn no_more_retries(attempt: u32, tries: u32) -> String {
    if attempt >= tries {
        format!("no more retries: {attempt} tries made")
    } else {
        "no more retries: the code would have expired".into()
    }
}

/// Who the member will see as the sender, per channel and destination.
pub type ShownSender = Arc<dyn Fn(Channel, &str) -> String + Send + Sync>;

pub struct Outbound {
    pub log: DeliveryLog,
    pub clock: Arc<Clock>,
    pub sms: Option<SmsClient>,
    pub email: Option<EmailClientConfig>,
    /// The SMS source address (national digits of the sender profile's number).
    pub sms_source: String,
    pub brand: String,
    /// Who the member will see as the sender, per channel and destination.
    pub shown: ShownSender,
    /// Set when the email channel goes to the embedded SMTP server.
    pub mail_link: Option<MailLink>,
}

impl Outbound {
    /// Boxed, because a submit the SMSC turned away for now schedules this
    /// again.
    fn send_sms(self: Arc<Self>, job: SendJob, attempt: u32) -> BoxFuture<'static, ()> {
        Box::pin(self.try_sms(job, attempt))
    }

    async fn try_sms(self: Arc<Self>, job: SendJob, attempt: u32) {
        let now = self.clock.now();
        let Some(client) = &self.sms else {
            self.record(
                &job.log_id,
                Event::new("submit_failed", now)
                    .state(State::Failed)
                    .reason("no_smsc_configured"),
            )
            .await;
            return;
        };
        let sms = OutgoingSms {
            from: self.sms_source.clone(),
            to_e164: job.destination.clone(),
            text: sms_text(&job.locale, &self.brand, &job.code, job.valid_minutes),
            message_ref: job.log_id.clone(),
        };
        let mut event = match client.submit(sms).await {
            Ok(smsc_id) => {
                let mut e = Event::new("submitted", self.clock.now())
                    .state(State::Submitted)
                    .detail("submit_sm_resp OK");
                e.smsc_message_id = Some(smsc_id);
                e.command_status = Some("0x00000000".into());
                e
            }
            Err(SmsError::Status(status)) => {
                let (reason, state) = match status {
                    0x58 => ("throttled", State::Enroute),
                    0x14 => ("smsc_queue_full", State::Enroute),
                    _ => ("smsc_refused", State::Failed),
                };
                let mut e = Event::new("submit_refused", self.clock.now())
                    .state(state)
                    .reason(reason);
                e.command_status = Some(format!("0x{status:08X}"));
                e
            }
            // No bind was up: nothing went out, so trying again cannot
            // send the code twice.
            Err(SmsError::NotConnected) => Event::new("submit_failed", self.clock.now())
                .state(State::Enroute)
                .reason("gateway_unreachable")
                .detail(SmsError::NotConnected.to_string()),
            // The submission may have arrived: not sent again.
            Err(other) => Event::new("submit_failed", self.clock.now())
                .state(State::Failed)
                .reason("gateway_unreachable")
                .detail(other.to_string()),
        };
        if event.state == Some(State::Enroute) {
            let now = self.clock.now();
            match sms_retry_at(now, attempt, job.expires_at) {
                Some(next) => {
                    event.attempt = Some(attempt);
                    event.next_attempt_at = Some(next);
                    let me = self.clone();
                    let log_id = job.log_id.clone();
                    self.clock
                        .schedule(next, Box::new(move |_| me.send_sms(job, attempt + 1)));
                    self.record(&log_id, event).await;
                    return;
                }
                None => {
                    event.state = Some(State::Failed);
                    event.detail = Some(no_more_retries(attempt, SMS_TRIES));
                }
            }
        }
        self.record(&job.log_id, event).await;
    }

    /// Boxed, because a deferred email schedules this again.
    fn send_email(self: Arc<Self>, job: SendJob, attempt: u32) -> BoxFuture<'static, ()> {
        Box::pin(self.try_email(job, attempt))
    }

    async fn try_email(self: Arc<Self>, job: SendJob, attempt: u32) {
        let log_id = job.log_id.clone();
        let Some(config) = &self.email else {
            self.record(
                &job.log_id,
                Event::new("send_failed", self.clock.now())
                    .state(State::Failed)
                    .reason("no_smtp_relay_configured"),
            )
            .await;
            return;
        };
        let mail = OutgoingEmail {
            to: job.destination.clone(),
            locale: job.locale.clone(),
            code: job.code.clone(),
            valid_minutes: job.valid_minutes,
            purpose: job.purpose.clone(),
            brand: self.brand.clone(),
            sent_at: self.clock.now(),
        };
        if let Some(link) = &self.mail_link {
            link.expect(&job.destination, &log_id);
        }
        let outcome = email::send_otp(config, &mail).await;
        let now = self.clock.now();
        let mut event = match &outcome {
            SendOutcome::Accepted { reply } => {
                let mut e = Event::new("smtp_accepted", now).state(State::Submitted);
                e.smtp_code = Some(250);
                e.smtp_reply = Some(reply.clone());
                e
            }
            SendOutcome::Rejected {
                code,
                enhanced,
                text,
                stage,
            } => {
                let reason = email_reason(*code, enhanced);
                let state = if reason == "domain_filter" {
                    State::Rejected
                } else {
                    State::Failed
                };
                let mut e = Event::new("smtp_rejected", now)
                    .state(state)
                    .reason(reason)
                    .detail(format!("at {stage}"));
                e.smtp_code = Some(*code);
                e.smtp_reply = Some(format!("{code} {enhanced} {text}"));
                e
            }
            // A full mailbox does not empty itself within the code's
            // validity: the member has to act, so it fails at once (DESIGN
            // section 7) instead of retrying until the code expires.
            SendOutcome::TryLater { code, enhanced, text } if email_reason(*code, enhanced) == "mailbox_full" => {
                let mut e = Event::new("smtp_rejected", now)
                    .state(State::Failed)
                    .reason("mailbox_full")
                    .detail("temporary refusal: the mailbox is full");
                e.smtp_code = Some(*code);
                e.smtp_reply = Some(format!("{code} {enhanced} {text}"));
                e
            }
            SendOutcome::TryLater { code, enhanced, text } => {
                let mut e = Event::new("smtp_deferred", now)
                    .state(State::Enroute)
                    .reason(email_reason(*code, enhanced));
                e.smtp_code = Some(*code);
                e.smtp_reply = Some(format!("{code} {enhanced} {text}"));
                e
            }
            SendOutcome::Unreachable(why) => Event::new("smtp_unreachable", now)
                .state(State::Enroute)
                .reason("relay_unreachable")
                .detail(why.clone()),
        };
        let retry = event.state == Some(State::Enroute);
        if retry {
            let next = now + EMAIL_RETRY_MS;
            if next >= job.expires_at || attempt >= EMAIL_TRIES {
                event.state = Some(State::Failed);
                event.detail = Some(no_more_retries(attempt, EMAIL_TRIES));
            } else {
                event.attempt = Some(attempt);
                event.next_attempt_at = Some(next);
                let me = self.clone();
                self.clock
                    .schedule(next, Box::new(move |_| me.send_email(job, attempt + 1)));
            }
        }
        self.record(&log_id, event).await;
    }

    async fn record(&self, log_id: &str, event: Event) {
        if let Err(e) = self.log.append(log_id, event).await {
            tracing::error!(message = log_id, error = %e, "could not record a delivery event");
        }
    }
}

/// The diagnosis word for an SMTP refusal or deferral, from the reply code
/// and its enhanced status code (RFC 3463).
pub fn email_reason(code: u16, enhanced: &str) -> &'static str {
    match (code, enhanced) {
        (550 | 551 | 553, e) if e.starts_with("5.1.") => "unknown_user",
        (_, "4.2.2" | "5.2.2") | (452 | 552, "") => "mailbox_full",
        (550 | 554, e) if e.starts_with("5.7.") => "domain_filter",
        (552, e) if e.starts_with("5.3.4") || e.is_empty() => "message_too_large",
        (451, e) if e.starts_with("4.7.") => "greylisted",
        (400..=499, _) => "temporary_failure",
        _ => "smtp_refused",
    }
}

impl Sender for Outbound {
    fn send(self: Arc<Self>, job: SendJob) -> BoxFuture<'static, ()> {
        match job.channel {
            Channel::Sms => self.send_sms(job, 1),
            Channel::Email => self.send_email(job, 1),
        }
    }

    fn shown_sender(&self, channel: Channel, destination: &str) -> String {
        (self.shown)(channel, destination)
    }
}

/// Records SMPP delivery receipts for the OTP core's messages.
pub struct ReceiptRecorder {
    pub log: DeliveryLog,
    pub clock: Arc<Clock>,
}

impl ReceiptSink for ReceiptRecorder {
    fn on_receipt(&self, receipt: IncomingReceipt) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // Only the id: the append reads the message itself.
            let id = match self.log.id_by_smsc_id(&receipt.message_id) {
                Ok(Some(id)) => id,
                Ok(None) => {
                    tracing::warn!(smsc_message_id = %receipt.message_id, "a receipt for a message otpgate did not send");
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, "reading the delivery log");
                    return;
                }
            };
            let mut event = Event::new("receipt", self.clock.now()).detail(receipt.text.clone());
            event.state = State::from_stat(&receipt.stat);
            event.stat = Some(receipt.stat.clone());
            event.err = Some(receipt.err.clone());
            event.smsc_message_id = Some(receipt.message_id.clone());
            event.network_error_code = receipt.network_error_code.map(|(t, c)| format!("{t}:{c}"));
            if let Err(e) = self.log.append(&id, event).await {
                tracing::error!(error = %e, "recording a receipt");
            }
        })
    }
}

/// Joins what the embedded SMTP server saw with the delivery log: the
/// mailbox side of the OTP core's own emails (delivered, spam, dropped by
/// the domain filter, refused) lands in that email's timeline; mail from
/// other applications gets a log entry of its own, and an application's
/// retry after a deferral (greylisting) continues the entry of the attempt it
/// repeats. The SMTP server waits for each event to be recorded before it
/// answers, so a timeline is in the order the client heard the replies.
/// Application mail waiting for a retry that is remembered at most; a
/// retry of one forgotten is logged as a new message.
const MAX_DEFERRED: usize = 10_000;

#[derive(Clone)]
pub struct MailLink {
    log: DeliveryLog,
    /// Recipient → the log message of the OTP email on its way there.
    expected: Arc<std::sync::Mutex<std::collections::HashMap<String, String>>>,
    /// (sender, recipient) → the log message of an application's deferred
    /// mail, until a retry settles it; the newest [`MAX_DEFERRED`] (an
    /// application may never retry, and senders are whatever it says).
    deferred: Arc<std::sync::Mutex<Recent<(String, String), String>>>,
    own_sender: String,
}

impl MailLink {
    pub fn new(log: DeliveryLog, own_sender: String) -> MailLink {
        MailLink {
            log,
            expected: Default::default(),
            deferred: Arc::new(std::sync::Mutex::new(Recent::new(MAX_DEFERRED))),
            own_sender,
        }
    }

    fn expect(&self, recipient: &str, log_id: &str) {
        self.expected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(recipient.to_ascii_lowercase(), log_id.to_string());
    }

    /// The observer to hand to the mail world.
    pub fn observer(&self) -> crate::smtp::capture::MailObserver {
        let link = self.clone();
        Arc::new(move |event: crate::smtp::MailEvent| {
            let link = link.clone();
            Box::pin(async move { link.record(event).await })
        })
    }

    async fn record(&self, e: crate::smtp::MailEvent) {
        use crate::smtp::{MailStage, Outcome};
        let reason = email_reason(e.code, &e.enhanced);
        let (kind, state, reason) = match e.outcome {
            Outcome::Accepted if e.stage == MailStage::Rcpt => return,
            Outcome::Accepted => ("delivered", State::Delivered, None),
            Outcome::Spam => ("delivered", State::Delivered, Some("spam_folder")),
            Outcome::Dropped => ("dropped", State::Rejected, Some("domain_filter")),
            // As for the OTP core's own sends: a full mailbox is a failure.
            Outcome::Deferred if reason == "mailbox_full" => ("refused", State::Failed, Some(reason)),
            Outcome::Deferred => ("deferred", State::Enroute, Some(reason)),
            Outcome::Rejected if reason == "domain_filter" => ("refused", State::Rejected, Some(reason)),
            Outcome::Rejected => ("refused", State::Failed, Some(reason)),
        };
        let mut event = Event::new(kind, e.at)
            .state(state)
            .detail(format!("mailbox {}", e.recipient));
        event.reason = reason.map(str::to_string);
        event.smtp_code = Some(e.code);
        event.smtp_reply = Some(match e.enhanced.as_str() {
            "" => format!("{} {}", e.code, e.text),
            enhanced => format!("{} {enhanced} {}", e.code, e.text),
        });
        let recipient = e.recipient.to_ascii_lowercase();
        let result = if e.from.eq_ignore_ascii_case(&self.own_sender) && self.expected_for(&recipient).is_some() {
            self.record_own(&recipient, event).await
        } else {
            self.record_external(&e, recipient, event).await
        };
        if let Err(err) = result {
            tracing::error!(error = %err, "recording a mail event");
        }
    }

    fn expected_for(&self, recipient: &str) -> Option<String> {
        self.expected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(recipient)
            .cloned()
    }

    /// An event of the OTP core's email to `recipient`; once it is final the
    /// recipient is no longer expected.
    async fn record_own(&self, recipient: &str, event: Event) -> Result<(), crate::store::StoreError> {
        let Some(log_id) = self.expected_for(recipient) else {
            return Ok(());
        };
        let is_final = event.state.is_some_and(State::is_final);
        self.log.append(&log_id, event).await?;
        if is_final {
            let mut expected = self.expected.lock().unwrap_or_else(|p| p.into_inner());
            if expected.get(recipient) == Some(&log_id) {
                expected.remove(recipient);
            }
        }
        Ok(())
    }

    /// An event of another application's mail: a new log entry, or the next
    /// event of the entry its earlier, deferred attempt made.
    async fn record_external(
        &self,
        e: &crate::smtp::MailEvent,
        recipient: String,
        event: Event,
    ) -> Result<(), crate::store::StoreError> {
        let key = (e.from.to_ascii_lowercase(), recipient.clone());
        let pending = self
            .deferred
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        let still_deferred = event.state == Some(State::Enroute);
        let log_id = match pending {
            Some(log_id) => {
                let mut event = event;
                if let Some(id) = &e.message_id {
                    event.detail = Some(format!("mailbox {recipient}, captured mail {id}"));
                }
                self.log.append(&log_id, event).await?;
                log_id
            }
            None => {
                let new = crate::delivery::log::NewMessage {
                    channel: Channel::Email,
                    to: recipient,
                    from: e.from.clone(),
                    origin: "smtp".into(),
                    member_id: None,
                    otp_id: None,
                    text: e
                        .message_id
                        .as_ref()
                        .map(|m| format!("captured mail {m}"))
                        .unwrap_or_default(),
                    carrier: None,
                    at: e.at,
                };
                self.log.create(new, event).await?.id
            }
        };
        let mut deferred = self.deferred.lock().unwrap_or_else(|p| p.into_inner());
        if still_deferred {
            deferred.insert(key, log_id);
        } else {
            deferred.remove(&key);
        }
        Ok(())
    }
}

//! One test per finding code, each a small world built from plain data and
//! checked with [`check`]: the code expected on top, in both languages, with
//! the report serialisable, free of plain codes and printable in 80 columns.

use super::render::max_line_width;
use super::*;
use crate::carrier::HandsetState;
use crate::clock::{Millis, DEFAULT_VIRTUAL_START};
use crate::delivery::log::{Event, State};
use crate::member::{Channel, Phone};
use crate::otp::{Entry, OtpStatus};

const T0: Millis = DEFAULT_VIRTUAL_START;
const MIN: Millis = 60_000;
const PHONE: &str = "+819012345678";
const EMAIL: &str = "taro@example.org";
const FROM: &str = "otp@mail.airline.example";

/// A world to diagnose: owns everything a [`Case`] borrows.
struct World {
    member: Option<Member>,
    destination: Option<String>,
    otps: Vec<Otp>,
    refusals: Vec<Refusal>,
    messages: Vec<Message>,
    handset: Option<(String, HandsetState)>,
    mailbox: Option<Mailbox>,
    carriers: CarrierSet,
    profile: SenderProfile,
    now: Millis,
    lang: String,
}

impl World {
    /// A member in Japan, SMS to a confirmed docomo phone, nothing set on it.
    fn sms_member() -> World {
        World {
            member: Some(Member {
                id: "M1".into(),
                locale: "ja".into(),
                residence: "JP".into(),
                email: Some(EMAIL.into()),
                phone: Some(Phone {
                    number: PHONE.into(),
                    verified: true,
                }),
                notification: Some(Channel::Sms),
                created_at: T0 - 86_400_000,
            }),
            destination: None,
            otps: Vec::new(),
            refusals: Vec::new(),
            messages: Vec::new(),
            handset: Some((PHONE.into(), HandsetState::default())),
            mailbox: None,
            carriers: CarrierSet::embedded(),
            profile: SenderProfile::default(),
            now: T0 + 5 * MIN,
            lang: "en".into(),
        }
    }

    /// The same member with codes going to email.
    fn email_member(address: &str) -> World {
        let mut w = World::sms_member();
        if let Some(m) = w.member.as_mut() {
            m.email = Some(address.into());
            m.phone = None;
            m.notification = Some(Channel::Email);
        }
        w.handset = None;
        w.mailbox = Some(Mailbox::catch_all(address));
        w
    }

    fn case(&self) -> Case<'_> {
        Case {
            member: self.member.as_ref(),
            destination: self.destination.as_deref(),
            otps: &self.otps,
            refusals: &self.refusals,
            messages: &self.messages,
            handset: self.handset.as_ref().map(|(n, h)| (n.as_str(), h)),
            mailbox: self.mailbox.as_ref(),
            carriers: &self.carriers,
            profile: &self.profile,
            email_from: FROM,
            now: self.now,
            lang: &self.lang,
        }
    }

    fn handset(&mut self) -> &mut HandsetState {
        &mut self.handset.as_mut().expect("a handset").1
    }

    fn member(&mut self) -> &mut Member {
        self.member.as_mut().expect("a member")
    }

    /// A pending OTP for `login`, issued at `at`, valid 10 minutes.
    fn otp(&mut self, id: &str, at: Millis) -> &mut Otp {
        let (channel, destination) = match self.member.as_ref().and_then(|m| m.destination().ok()) {
            Some(d) => d,
            None => (Channel::Sms, PHONE.to_string()),
        };
        self.otps.push(Otp {
            id: id.into(),
            member_id: "M1".into(),
            purpose: "login".into(),
            channel,
            destination,
            sender: "03-5460-0124".into(),
            code_hash: "ab".repeat(32),
            issued_at: at,
            expires_at: at + 10 * MIN,
            status: OtpStatus::Pending,
            attempts: 0,
            max_attempts: 5,
            superseded_by: None,
            verified_at: None,
            entries: Vec::new(),
            message_id: None,
        });
        self.otps.last_mut().expect("just pushed")
    }

    /// An OTP SMS as the OTP core and the simulated network log it: queued,
    /// accepted by the SMSC, submitted, then `tail`.
    fn sms(&mut self, id: &str, otp: Option<&str>, at: Millis, tail: Vec<Event>) {
        let carrier = self
            .handset
            .as_ref()
            .map_or("docomo".to_string(), |(_, h)| h.carrier.clone());
        let shown = self
            .carriers
            .get(&carrier)
            .map(|c| c.displayed_sender(&self.profile.number, &self.profile))
            .unwrap_or_else(|| "03-5460-0124".into());
        let mut accepted = Event::new("smsc_accepted", at).state(State::Submitted);
        accepted.smsc_message_id = Some("0000000001".into());
        let mut submitted = Event::new("submitted", at).state(State::Submitted);
        submitted.command_status = Some("0x00000000".into());
        let mut events = vec![Event::new("queued", at).state(State::Queued), accepted, submitted];
        events.extend(tail);
        self.push_message(id, Channel::Sms, PHONE, &shown, otp, Some(carrier), at, events);
    }

    /// An OTP email: queued, then `tail`.
    fn email(&mut self, id: &str, otp: Option<&str>, at: Millis, tail: Vec<Event>) {
        let to = self
            .member
            .as_ref()
            .and_then(|m| m.email.clone())
            .unwrap_or_else(|| EMAIL.into());
        let mut events = vec![Event::new("queued", at).state(State::Queued)];
        events.extend(tail);
        self.push_message(id, Channel::Email, &to, FROM, otp, None, at, events);
    }

    #[allow(clippy::too_many_arguments)]
    fn push_message(
        &mut self,
        id: &str,
        channel: Channel,
        to: &str,
        from: &str,
        otp: Option<&str>,
        carrier: Option<String>,
        at: Millis,
        mut events: Vec<Event>,
    ) {
        let mut state = State::Queued;
        for (i, e) in events.iter_mut().enumerate() {
            e.id = format!("{id}.{}", i + 1);
            if let Some(s) = e.state {
                if !state.is_final() {
                    state = s;
                }
            }
        }
        self.messages.push(Message {
            id: id.into(),
            channel,
            to: to.into(),
            from: from.into(),
            origin: "otpgate".into(),
            member_id: self.member.as_ref().map(|m| m.id.clone()),
            otp_id: otp.map(str::to_string),
            text: "【JAL】ワンタイムパスワード: ******".into(),
            smsc_message_id: None,
            carrier,
            state,
            created_at: at,
            updated_at: events.last().map_or(at, |e| e.at),
            events,
        });
    }
}

// ----- events as the network and the channels write them -----

fn sms_final(kind: &str, at: Millis, reason: &str, stat: &str, err: &str, nec: Option<&str>) -> Event {
    let state = State::from_stat(stat).unwrap_or(State::Failed);
    let mut e = Event::new(kind, at).state(state).reason(reason);
    e.stat = Some(stat.into());
    e.err = Some(err.into());
    e.network_error_code = nec.map(str::to_string);
    e.attempt = Some(1);
    e
}

fn rejected(at: Millis, reason: &str, err: &str) -> Event {
    let nec = (err == "013").then_some("3:13");
    sms_final("rejected", at, reason, "REJECTD", err, nec)
}

fn undeliv(at: Millis, reason: &str, err: &str) -> Event {
    let nec = format!("3:{}", err.trim_start_matches('0'));
    sms_final("failed", at, reason, "UNDELIV", err, Some(&nec))
}

fn receipt(at: Millis, stat: &str, err: &str) -> Event {
    let mut e = Event::new("receipt", at);
    e.state = State::from_stat(stat);
    e.stat = Some(stat.into());
    e.err = Some(err.into());
    e
}

fn delivered(at: Millis) -> Event {
    let mut e = Event::new("delivered", at).state(State::Delivered);
    e.stat = Some("DELIVRD".into());
    e.err = Some("000".into());
    e
}

fn retry(at: Millis, reason: &str, attempt: u32) -> Event {
    let mut e = Event::new("retry_scheduled", at).state(State::Enroute).reason(reason);
    e.attempt = Some(attempt);
    e.next_attempt_at = Some(at + MIN);
    e.err = Some("027".into());
    e.network_error_code = Some("3:27".into());
    e
}

fn expired(at: Millis) -> Event {
    sms_final("expired", at, "validity_period_ended", "EXPIRED", "027", Some("3:27"))
}

fn smtp(kind: &str, at: Millis, state: State, reason: Option<&str>, code: u16, enhanced: &str) -> Event {
    let mut e = Event::new(kind, at).state(state);
    e.reason = reason.map(str::to_string);
    e.smtp_code = Some(code);
    e.smtp_reply = Some(format!("{code} {enhanced} reply text for {EMAIL}"));
    e
}

fn entry(at: Millis, result: &str, matched: Option<&str>) -> Entry {
    Entry {
        at,
        result: result.into(),
        matched_otp: matched.map(str::to_string),
    }
}

// ----- the check -----

/// Runs `build` on an SMS member's world and checks that `expect` is the
/// top finding, in English and in Japanese, and that the report keeps the
/// rules every report keeps. Returns the English report.
fn check(build: impl FnOnce(&mut World), expect: &str) -> Report {
    check_in(World::sms_member(), build, expect)
}

fn check_in(mut world: World, build: impl FnOnce(&mut World), expect: &str) -> Report {
    build(&mut world);
    world.lang = "en".into();
    let en = diagnose(&world.case());
    world.lang = "ja".into();
    let ja = diagnose(&world.case());
    let text = render_text(&en);
    assert_eq!(en.findings.first().map(|f| f.code), Some(expect), "\n{text}");
    let codes = |r: &Report| r.findings.iter().map(|f| (f.code, f.severity)).collect::<Vec<_>>();
    assert_eq!(codes(&en), codes(&ja), "the same findings in both languages");
    assert_eq!(en.summary, en.findings[0].title);
    assert_keeps_the_rules(&en);
    assert_keeps_the_rules(&ja);
    for f in &ja.findings {
        assert!(
            f.title.chars().chain(f.explanation.chars()).any(|c| c as u32 >= 0x3040),
            "{} has Japanese texts: {}",
            f.code,
            f.explanation
        );
    }
    en
}

fn assert_keeps_the_rules(report: &Report) {
    let json = serde_json::to_string(report).expect("a report serialises");
    assert_no_plain_code(&json);
    let text = render_text(report);
    assert_no_plain_code(&text);
    assert!(max_line_width(&text) <= 80, "wider than 80 columns:\n{text}");
    let mut seen = std::collections::HashSet::new();
    for f in &report.findings {
        assert!(seen.insert(f.code), "one finding per code: {}", f.code);
        assert!(CODES.contains(&f.code), "{} is in the catalogue", f.code);
        assert!(!f.title.is_empty() && !f.explanation.is_empty() && !f.remediation.is_empty());
        assert!(!f.evidence.is_empty(), "{} has evidence", f.code);
    }
    for pair in report.findings.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert!(
            a.severity < b.severity || (a.severity == b.severity && a.newest() >= b.newest()),
            "ranked: {} before {}",
            a.code,
            b.code
        );
    }
    if report.findings.iter().any(|f| f.code == "delivered_ok") {
        assert!(report.findings.iter().all(|f| f.severity == Severity::Info));
    }
    assert!(
        report.timeline.windows(2).all(|w| w[0].at <= w[1].at),
        "timeline sorted"
    );
}

/// No run of exactly six digits, except inside a date or a time.
fn assert_no_plain_code(text: &str) {
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if !chars[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && chars[i].is_ascii_digit() {
            i += 1;
        }
        if i - start == 6 {
            let before = if start > 0 { chars[start - 1] } else { ' ' };
            let after = chars.get(i).copied().unwrap_or(' ');
            let in_date_or_time = matches!(before, '-' | ':' | 'T' | '.') || matches!(after, '-' | ':');
            let run: String = chars[start..i].iter().collect();
            assert!(in_date_or_time, "a 6-digit run `{run}` in:\n{text}");
        }
    }
}

fn finding<'a>(report: &'a Report, code: &str) -> &'a Finding {
    report
        .findings
        .iter()
        .find(|f| f.code == code)
        .unwrap_or_else(|| panic!("no {code} in {:?}", report.findings))
}

fn codes(report: &Report) -> Vec<&'static str> {
    report.findings.iter().map(|f| f.code).collect()
}

// ----- one test per code -----

#[test]
fn sms_not_registered_when_the_number_is_not_confirmed() {
    let report = check(
        |w| {
            let m = w.member();
            m.notification = Some(Channel::Email);
            m.phone.as_mut().expect("a phone").verified = false;
        },
        "sms_not_registered",
    );
    let f = finding(&report, "sms_not_registered");
    assert_eq!(f.severity, Severity::Warning);
    assert!(f.explanation.contains("090-****-5678"), "{}", f.explanation);
    assert!(f.remediation.contains("3. confirm it"), "{}", f.remediation);
    // With no destination at all, nothing can be sent: an error.
    let report = check(
        |w| {
            let m = w.member();
            m.notification = None;
            m.email = None;
            m.phone = None;
        },
        "sms_not_registered",
    );
    assert_eq!(report.findings[0].severity, Severity::Error);
    assert!(report.findings[0].remediation.contains("1. log in"));
}

#[test]
fn sms_outside_japan_for_a_member_abroad_with_a_phone() {
    let report = check(
        |w| {
            let m = w.member();
            m.residence = "US".into();
            m.notification = Some(Channel::Email);
        },
        "sms_outside_japan",
    );
    let f = finding(&report, "sms_outside_japan");
    assert_eq!(f.severity, Severity::Warning);
    assert!(f.explanation.contains("US") && f.remediation.contains("email"));
    assert!(!codes(&report).contains(&"sms_not_registered"));
}

#[test]
fn sender_id_differs_on_the_softbank_network() {
    let report = check(
        |w| {
            w.handset().carrier = "ymobile".into();
            w.otp("otp_a", T0);
            w.sms(
                "m1",
                Some("otp_a"),
                T0,
                vec![delivered(T0 + 3000), receipt(T0 + 3000, "DELIVRD", "000")],
            );
        },
        "sender_id_differs",
    );
    let f = finding(&report, "sender_id_differs");
    assert_eq!(f.severity, Severity::Warning);
    assert!(
        f.title.contains("22471") && f.title.contains("03-5460-0124"),
        "{}",
        f.title
    );
    assert!(f.remediation.contains("22471"));
    assert_eq!(report.registration.sms_sender.as_deref(), Some("22471"));
    // Not on docomo.
    let docomo = check(
        |w| {
            w.otp("otp_a", T0);
            w.sms("m1", Some("otp_a"), T0, vec![delivered(T0 + 3000)]);
        },
        "delivered_ok",
    );
    assert!(!codes(&docomo).contains(&"sender_id_differs"));
}

#[test]
fn blocked_by_sms_filter_names_the_carriers_setting_and_the_sender() {
    let report = check(
        |w| {
            w.handset().filters.reject_all = true;
            w.otp("otp_a", T0);
            w.sms(
                "m1",
                Some("otp_a"),
                T0,
                vec![
                    rejected(T0 + 2000, "reject_all", "101"),
                    receipt(T0 + 2000, "REJECTD", "101"),
                ],
            );
        },
        "blocked_by_sms_filter",
    );
    let f = finding(&report, "blocked_by_sms_filter");
    assert_eq!(f.severity, Severity::Error);
    assert!(f.title.contains("SMS一括拒否"), "{}", f.title);
    assert!(f.remediation.contains("SMS一括拒否") && f.remediation.contains("03-5460-0124"));
    assert!(f.explanation.contains("REJECTD err:101"), "{}", f.explanation);
    assert!(f
        .evidence
        .iter()
        .any(|e| e.kind == "event" && e.detail.contains("REJECTD err:101")));

    // SoftBank shows 22471, and the member allows that.
    let mut world = World::sms_member();
    world.lang = "ja".into();
    let report = check_in(
        world,
        |w| {
            w.handset().carrier = "softbank".into();
            w.handset().filters.blocked_senders = vec!["22471".into()];
            w.sms("m1", None, T0, vec![rejected(T0 + 2000, "blocked_sender", "101")]);
        },
        "blocked_by_sms_filter",
    );
    let f = finding(&report, "blocked_by_sms_filter");
    assert!(f.remediation.contains("電話番号メール拒否・許可") && f.remediation.contains("22471"));

    // A real SMSC's receipt alone is enough; au's setting is named in Japanese.
    let mut world = World::sms_member();
    world.lang = "ja".into();
    world.handset().carrier = "au".into();
    world.handset().filters.reject_other_domestic = true;
    world.sms("m1", None, T0, vec![receipt(T0 + 2000, "REJECTD", "101")]);
    let ja = diagnose(&world.case());
    let f = finding(&ja, "blocked_by_sms_filter");
    assert!(f.title.contains("迷惑SMSブロック"), "{}", f.title);
    assert!(f.remediation.contains("03-5460-0124"), "{}", f.remediation);

    // The filter is on but no code was sent yet: a warning.
    let report = check(|w| w.handset().filters.reject_all = true, "blocked_by_sms_filter");
    assert_eq!(report.findings[0].severity, Severity::Warning);
    assert!(report.findings[0].evidence.iter().any(|e| e.kind == "handset"));
}

#[test]
fn blocked_by_call_restriction_says_which_number_to_allow() {
    let report = check(
        |w| {
            w.handset().call_restriction = true;
            w.sms("m1", None, T0, vec![rejected(T0 + 2000, "call_restriction", "013")]);
        },
        "blocked_by_call_restriction",
    );
    let f = finding(&report, "blocked_by_call_restriction");
    assert_eq!(f.severity, Severity::Error);
    assert!(f.remediation.contains("03-5460-0124"), "{}", f.remediation);
    assert!(f.remediation.contains("迷惑電話ストップサービス"), "{}", f.remediation);
    assert!(f.explanation.contains("network_error_code 3:13"), "{}", f.explanation);
    assert!(!codes(&report).contains(&"blocked_by_sms_filter"));
}

#[test]
fn handset_storage_full_from_memory_capacity_exceeded() {
    let report = check(
        |w| {
            w.handset().storage_full = true;
            w.sms("m1", None, T0, vec![undeliv(T0 + 2000, "storage_full", "032")]);
        },
        "handset_storage_full",
    );
    let f = finding(&report, "handset_storage_full");
    assert!(f.explanation.contains("UNDELIV err:032"));
    assert!(f.remediation.contains("Delete"));
}

#[test]
fn handset_unreachable_while_retrying_after_expiry_and_when_off_now() {
    let report = check(
        |w| {
            w.handset().powered_on = false;
            w.otp("otp_a", T0);
            w.sms("m1", Some("otp_a"), T0, vec![retry(T0 + 2000, "powered_off", 1)]);
        },
        "handset_unreachable",
    );
    let f = finding(&report, "handset_unreachable");
    assert_eq!(f.severity, Severity::Error);
    assert!(f.explanation.contains("switched off") && f.explanation.contains("retrying"));
    assert!(f.evidence.iter().any(|e| e.kind == "handset"));

    let report = check(
        |w| {
            w.now = T0 + 73 * 3_600_000;
            w.sms(
                "m1",
                None,
                T0,
                vec![retry(T0 + 2000, "no_coverage", 1), expired(T0 + 72 * 3_600_000)],
            );
        },
        "handset_unreachable",
    );
    assert!(
        report.findings[0].explanation.contains("gave up"),
        "{}",
        report.findings[0].explanation
    );

    // Back on, then rejected by a filter: the filter explains it, not the signal.
    let report = check(
        |w| {
            w.sms(
                "m1",
                None,
                T0,
                vec![
                    retry(T0 + 2000, "powered_off", 1),
                    rejected(T0 + MIN, "reject_all", "101"),
                ],
            )
        },
        "blocked_by_sms_filter",
    );
    assert!(!codes(&report).contains(&"handset_unreachable"));

    // Off right now, nothing sent yet: a warning.
    let report = check(|w| w.handset().in_coverage = false, "handset_unreachable");
    assert_eq!(report.findings[0].severity, Severity::Warning);
}

#[test]
fn roaming_abroad_without_roaming_and_with_it() {
    let report = check(
        |w| {
            w.handset().abroad = true;
            w.sms("m1", None, T0, vec![retry(T0 + 2000, "abroad_no_roaming", 1)]);
        },
        "roaming_abroad",
    );
    assert!(!codes(&report).contains(&"handset_unreachable"));
    assert!(report.findings[0].remediation.contains("email"));
    let report = check(
        |w| {
            w.handset().abroad = true;
            w.handset().roaming = true;
        },
        "roaming_abroad",
    );
    assert_eq!(report.findings[0].severity, Severity::Warning);
}

#[test]
fn no_sms_plan_on_a_data_only_sim() {
    let report = check(
        |w| {
            w.handset().sms_plan = false;
            w.sms("m1", None, T0, vec![undeliv(T0 + 2000, "no_sms_plan", "011")]);
        },
        "no_sms_plan",
    );
    assert!(report.findings[0].explanation.contains("data-only"));
}

#[test]
fn invalid_number_from_unknown_subscriber_or_a_refused_destination() {
    check(
        |w| w.sms("m1", None, T0, vec![undeliv(T0 + 2000, "unknown_subscriber", "001")]),
        "invalid_number",
    );
    check(
        |w| {
            let mut refused = Event::new("submit_refused", T0)
                .state(State::Failed)
                .reason("smsc_refused");
            refused.command_status = Some("0x0000000B".into());
            w.push_message("m1", Channel::Sms, PHONE, "03-5460-0124", None, None, T0, vec![refused]);
        },
        "invalid_number",
    );
}

#[test]
fn invalid_number_when_the_number_is_out_of_service_now() {
    let report = check(|w| w.handset().in_service = false, "invalid_number");
    assert_eq!(report.findings[0].severity, Severity::Warning);
    assert!(report.findings[0].explanation.contains("not in service"));
}

#[test]
fn delivery_delayed_when_it_arrives_minutes_later_or_is_still_on_its_way() {
    let report = check(
        |w| {
            w.otp("otp_a", T0);
            w.sms("m1", Some("otp_a"), T0, vec![delivered(T0 + 3 * MIN)]);
        },
        "delivery_delayed",
    );
    assert!(
        report.findings[0].explanation.contains("3 minutes later"),
        "{}",
        report.findings[0].explanation
    );
    check(
        |w| {
            w.otp("otp_a", T0);
            w.sms("m1", Some("otp_a"), T0, vec![]);
        },
        "delivery_delayed",
    );
}

#[test]
fn delivered_after_expiry_when_the_code_was_already_dead() {
    let report = check(
        |w| {
            w.now = T0 + 15 * MIN;
            w.otp("otp_a", T0);
            w.sms("m1", Some("otp_a"), T0, vec![delivered(T0 + 12 * MIN)]);
        },
        "delivered_after_expiry",
    );
    assert!(!codes(&report).contains(&"delivery_delayed"));
    // The phone was off until then: the explanation says why it waited.
    let report = check(
        |w| {
            w.now = T0 + 130 * MIN;
            w.otp("otp_a", T0);
            w.sms(
                "m1",
                Some("otp_a"),
                T0,
                vec![retry(T0 + 2000, "powered_off", 1), delivered(T0 + 120 * MIN)],
            );
        },
        "delivered_after_expiry",
    );
    assert!(
        report.findings[0].explanation.contains("switched off"),
        "{}",
        report.findings[0].explanation
    );
    assert!(!codes(&report).contains(&"handset_unreachable"));
}

#[test]
fn code_expired_when_entered_after_ten_minutes() {
    let report = check(
        |w| {
            w.now = T0 + 12 * MIN;
            w.otp("otp_a", T0).entries.push(entry(T0 + 11 * MIN, "expired", None));
            w.sms("m1", Some("otp_a"), T0, vec![delivered(T0 + 3000)]);
        },
        "code_expired",
    );
    assert!(report.findings[0].explanation.contains("10 minutes"));
    assert!(!codes(&report).contains(&"delivered_ok"));
}

#[test]
fn code_already_used_when_entered_twice() {
    check(
        |w| {
            let otp = w.otp("otp_a", T0);
            otp.status = OtpStatus::Verified;
            otp.verified_at = Some(T0 + MIN);
            otp.entries = vec![
                entry(T0 + MIN, "verified", None),
                entry(T0 + 2 * MIN, "already_used", None),
            ];
            w.sms("m1", Some("otp_a"), T0, vec![delivered(T0 + 3000)]);
        },
        "code_already_used",
    );
}

#[test]
fn superseded_code_entered_when_an_older_code_matches() {
    let report = check(
        |w| {
            let old = w.otp("otp_old", T0);
            old.status = OtpStatus::Superseded;
            old.superseded_by = Some("otp_new".into());
            let new = w.otp("otp_new", T0 + 2 * MIN);
            new.attempts = 1;
            new.entries.push(entry(T0 + 3 * MIN, "superseded", Some("otp_old")));
            w.sms("m1", Some("otp_old"), T0, vec![delivered(T0 + 3000)]);
            w.sms(
                "m2",
                Some("otp_new"),
                T0 + 2 * MIN,
                vec![delivered(T0 + 2 * MIN + 3000)],
            );
        },
        "superseded_code_entered",
    );
    let f = finding(&report, "superseded_code_entered");
    assert!(f.remediation.contains("newest") && f.remediation.contains("entry screen"));
    let entered = report
        .timeline
        .iter()
        .find(|t| t.kind == "code_entered")
        .expect("the entry is on the timeline");
    assert!(entered.summary.contains("matched an older code") && entered.failure);
    assert!(report
        .timeline
        .iter()
        .any(|t| t.kind == "otp_superseded" && t.subject == "otp_old"));
}

#[test]
fn too_many_attempts_when_the_code_is_locked() {
    let report = check(
        |w| {
            let otp = w.otp("otp_a", T0);
            otp.status = OtpStatus::Locked;
            otp.attempts = 5;
            otp.entries = (1..=5).map(|i| entry(T0 + i * 10_000, "invalid_code", None)).collect();
            w.sms("m1", Some("otp_a"), T0, vec![delivered(T0 + 3000)]);
        },
        "too_many_attempts",
    );
    assert_eq!(report.findings[0].severity, Severity::Error);
    assert!(report.findings[0].explanation.starts_with("5 wrong codes"));
}

#[test]
fn send_rate_limited_when_the_last_request_was_refused() {
    let report = check(
        |w| {
            w.otp("otp_a", T0);
            w.sms("m1", Some("otp_a"), T0, vec![delivered(T0 + 3000)]);
            w.refusals.push(Refusal {
                at: T0 + 30_000,
                member_id: "M1".into(),
                purpose: "login".into(),
                destination: PHONE.into(),
                retry_after: 30,
            });
            w.now = T0 + 40_000;
        },
        "send_rate_limited",
    );
    let f = finding(&report, "send_rate_limited");
    assert_eq!(f.severity, Severity::Error);
    assert!(f.remediation.contains("Wait until"), "{}", f.remediation);
    assert!(f.evidence[0].id.contains("****"));
    assert!(report.timeline.iter().any(|t| t.kind == "send_refused" && t.failure));
}

#[test]
fn email_unknown_user_from_550_at_rcpt() {
    let report = check_in(
        World::email_member(EMAIL),
        |w| {
            w.mailbox.as_mut().expect("a mailbox").exists = false;
            w.email(
                "m1",
                None,
                T0,
                vec![smtp(
                    "smtp_rejected",
                    T0 + 500,
                    State::Failed,
                    Some("unknown_user"),
                    550,
                    "5.1.1",
                )],
            );
        },
        "email_unknown_user",
    );
    let f = finding(&report, "email_unknown_user");
    assert!(f.explanation.contains("SMTP 550 5.1.1") && f.explanation.contains("t***@example.org"));
    assert!(f.remediation.contains("mistyped"));
}

#[test]
fn email_mailbox_full_from_552_or_452() {
    check_in(
        World::email_member("taro@docomo.ne.jp"),
        |w| {
            w.email(
                "m1",
                None,
                T0,
                vec![smtp(
                    "smtp_rejected",
                    T0 + 500,
                    State::Failed,
                    Some("mailbox_full"),
                    552,
                    "5.2.2",
                )],
            )
        },
        "email_mailbox_full",
    );
    check_in(
        World::email_member(EMAIL),
        |w| {
            w.email(
                "m1",
                None,
                T0,
                vec![smtp(
                    "smtp_deferred",
                    T0 + 500,
                    State::Enroute,
                    Some("temporary_failure"),
                    452,
                    "4.2.2",
                )],
            )
        },
        "email_mailbox_full",
    );
}

#[test]
fn email_domain_filter_names_the_carrier_mail_setting_and_the_domain() {
    let report = check_in(
        World::email_member("taro@ezweb.ne.jp"),
        |w| {
            w.mailbox.as_mut().expect("a mailbox").allowed_domains = vec!["other.example".into()];
            w.email(
                "m1",
                None,
                T0,
                vec![
                    smtp("smtp_accepted", T0 + 500, State::Submitted, None, 250, "2.0.0"),
                    smtp(
                        "dropped",
                        T0 + 600,
                        State::Rejected,
                        Some("domain_filter"),
                        250,
                        "2.0.0",
                    ),
                ],
            )
        },
        "email_domain_filter",
    );
    let f = finding(&report, "email_domain_filter");
    assert_eq!(f.severity, Severity::Error);
    assert!(f.remediation.contains("受信リスト設定"), "{}", f.remediation);
    assert!(f.remediation.contains("mail.airline.example") && f.remediation.contains(FROM));
    assert!(f.explanation.contains("dropped"));
    assert!(!codes(&report).contains(&"delivered_ok"));
    // In the spam folder: a warning that says where to look.
    let report = check_in(
        World::email_member(EMAIL),
        |w| {
            w.mailbox.as_mut().expect("a mailbox").spam = true;
            let mut spam = smtp(
                "delivered",
                T0 + 600,
                State::Delivered,
                Some("spam_folder"),
                250,
                "2.0.0",
            );
            spam.detail = Some("mailbox".into());
            w.email("m1", None, T0, vec![spam]);
        },
        "email_domain_filter",
    );
    let f = finding(&report, "email_domain_filter");
    assert_eq!(f.severity, Severity::Warning);
    assert!(f.title.contains("spam") && f.remediation.contains("spam folder"));
}

#[test]
fn email_delayed_by_greylisting() {
    let report = check_in(
        World::email_member(EMAIL),
        |w| {
            let mut e = smtp(
                "smtp_deferred",
                T0 + 500,
                State::Enroute,
                Some("greylisted"),
                451,
                "4.7.1",
            );
            e.next_attempt_at = Some(T0 + 5 * MIN);
            w.email("m1", None, T0, vec![e]);
        },
        "email_delayed",
    );
    let f = finding(&report, "email_delayed");
    assert_eq!(f.severity, Severity::Warning);
    assert!(f.explanation.contains("SMTP 451 4.7.1") && f.explanation.contains("greylisting"));
}

#[test]
fn gateway_error_when_the_smsc_throttles() {
    let report = check(
        |w| {
            let mut refused = Event::new("submit_refused", T0)
                .state(State::Failed)
                .reason("throttled");
            refused.command_status = Some("0x00000058".into());
            w.push_message("m1", Channel::Sms, PHONE, "03-5460-0124", None, None, T0, vec![refused]);
        },
        "gateway_error",
    );
    let f = finding(&report, "gateway_error");
    assert!(f.explanation.contains("command_status 0x00000058"), "{}", f.explanation);
    assert!(f.explanation.contains("not caused by the member"));
}

/// A long message whose other parts never came from the sender is the
/// sending side's fault, not the phone's: gateway_error, not
/// handset_unreachable, although the message EXPIRED.
#[test]
fn gateway_error_when_a_long_message_never_came_whole() {
    let report = check(
        |w| {
            w.otp("otp_a", T0);
            let incomplete = sms_final(
                "incomplete",
                T0 + 10 * MIN,
                "long_message_incomplete",
                "EXPIRED",
                "027",
                Some("3:27"),
            );
            w.sms("m1", Some("otp_a"), T0, vec![incomplete]);
        },
        "gateway_error",
    );
    assert!(!codes(&report).contains(&"handset_unreachable"), "{:?}", codes(&report));
    let f = finding(&report, "gateway_error");
    assert!(
        f.explanation.contains("parts of the long message never came"),
        "{}",
        f.explanation
    );
    let timeline = report.timeline.iter().map(|t| t.summary.as_str()).collect::<Vec<_>>();
    assert!(
        timeline
            .iter()
            .any(|s| s.starts_with("Not delivered: parts of the long message never came")),
        "{timeline:?}"
    );
}

#[test]
fn delivered_ok_only_when_nothing_else_is_wrong() {
    let report = check(
        |w| {
            w.otp("otp_a", T0);
            w.sms(
                "m1",
                Some("otp_a"),
                T0,
                vec![delivered(T0 + 2500), receipt(T0 + 2500, "DELIVRD", "000")],
            );
        },
        "delivered_ok",
    );
    assert_eq!(codes(&report), ["delivered_ok"]);
    assert!(report.findings[0].remediation.contains("03-5460-0124"));
    assert!(!report.summary.is_empty());
    // Nothing sent, nothing wrong: no findings at all.
    let empty = diagnose(&World::sms_member().case());
    assert!(empty.findings.is_empty());
    assert!(empty.summary.contains("nothing wrong"));
}

// ----- ranking, severities, timeline, output -----

#[test]
fn errors_rank_before_warnings_and_newer_evidence_first() {
    let mut w = World::sms_member();
    w.now = T0 + 30 * MIN;
    let old = w.otp("otp_a", T0);
    old.entries.push(entry(T0 + 11 * MIN, "expired", None));
    w.otp("otp_b", T0 + 12 * MIN)
        .entries
        .push(entry(T0 + 25 * MIN, "already_used", None));
    w.sms("m1", Some("otp_a"), T0, vec![undeliv(T0 + 2000, "storage_full", "032")]);
    let report = diagnose(&w.case());
    assert_eq!(
        codes(&report),
        ["handset_storage_full", "code_already_used", "code_expired"]
    );
}

#[test]
fn a_later_delivery_makes_an_old_failure_a_warning() {
    let mut w = World::sms_member();
    w.sms("m1", None, T0, vec![undeliv(T0 + 2000, "storage_full", "032")]);
    w.sms("m2", None, T0 + 2 * MIN, vec![delivered(T0 + 2 * MIN + 2000)]);
    let report = diagnose(&w.case());
    let f = finding(&report, "handset_storage_full");
    assert_eq!(f.severity, Severity::Warning);
    assert!(f.explanation.contains("later code did arrive"));
}

#[test]
fn a_destination_without_a_member_is_diagnosed_too() {
    let mut w = World::sms_member();
    w.member = None;
    w.destination = Some("090-1234-5678".into());
    w.handset().storage_full = true;
    let report = diagnose(&w.case());
    assert_eq!(report.member_id, None);
    assert_eq!(codes(&report), ["handset_storage_full"]);
    assert_eq!(report.registration.phone.as_deref(), Some("090-****-5678"));
    let mut w = World::sms_member();
    w.member = None;
    w.handset = None;
    w.destination = Some("03-1234-5678".into());
    assert_eq!(codes(&diagnose(&w.case())), ["invalid_number"]);
}

#[test]
fn the_timeline_merges_otps_entries_refusals_and_events() {
    let mut w = World::sms_member();
    w.now = T0 + 20 * MIN;
    w.otp("otp_a", T0).entries.push(entry(T0 + MIN, "invalid_code", None));
    w.sms(
        "m1",
        Some("otp_a"),
        T0,
        vec![
            rejected(T0 + 2000, "reject_all", "101"),
            receipt(T0 + 2000, "REJECTD", "101"),
        ],
    );
    w.refusals.push(Refusal {
        at: T0 + 30_000,
        member_id: "M1".into(),
        purpose: "login".into(),
        destination: PHONE.into(),
        retry_after: 30,
    });
    let report = diagnose(&w.case());
    let kinds: Vec<&str> = report.timeline.iter().map(|t| t.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "otp_issued",
            "queued",
            "smsc_accepted",
            "submitted",
            "rejected",
            "receipt",
            "send_refused",
            "code_entered",
            "otp_expired"
        ]
    );
    let rejected = &report.timeline[4];
    assert!(
        rejected.failure && rejected.summary.contains("REJECTD err:101"),
        "{}",
        rejected.summary
    );
    assert!(!report.timeline[0].failure);
    assert!(report.timeline[7].summary.contains("wrong code (attempt 1 of 5)"));
}

#[test]
fn a_report_serialises_without_plain_codes() {
    let mut w = World::sms_member();
    w.otp("otp_a", T0);
    w.sms(
        "m1",
        Some("otp_a"),
        T0,
        vec![rejected(T0 + 2000, "content_filter", "102")],
    );
    let report = diagnose(&w.case());
    let json = serde_json::to_value(&report).expect("serialises");
    assert_eq!(json["member_id"], "M1");
    assert_eq!(json["findings"][0]["code"], "blocked_by_sms_filter");
    assert_eq!(json["findings"][0]["severity"], "error");
    assert!(json["findings"][0]["evidence"][0]["kind"].is_string());
    assert!(json["timeline"].as_array().is_some_and(|t| !t.is_empty()));
    assert_eq!(json["registration"]["phone"], "090-****-5678");
    assert_no_plain_code(&json.to_string());
}

#[test]
fn render_text_puts_findings_before_the_timeline_in_80_columns() {
    for lang in ["en", "ja"] {
        let mut w = World::sms_member();
        w.lang = lang.into();
        w.handset().carrier = "softbank".into();
        w.handset().filters.reject_other_domestic = true;
        w.otp("otp_a", T0);
        w.sms(
            "m1",
            Some("otp_a"),
            T0,
            vec![rejected(T0 + 2000, "reject_other_domestic", "101")],
        );
        let text = render_text(&diagnose(&w.case()));
        assert!(max_line_width(&text) <= 80, "{text}");
        let findings = text.find("blocked_by_sms_filter").expect("the finding");
        let timeline = text.find("otp_issued").expect("the timeline");
        assert!(findings < timeline, "{text}");
        assert!(text.contains("22471"));
    }
}

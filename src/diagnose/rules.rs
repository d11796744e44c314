//! One rule per finding code of the catalogue. Each reads the [`Facts`] and
//! returns at most one finding, with all of its evidence gathered, its
//! severity, and its texts in the report's language.
//!
//! Severities: a failure seen in the delivery log is an error (a warning
//! once a later code on the same channel got through); the same cause read
//! only from the handset's or mailbox's current state is a warning; things
//! that may explain a missing code are warnings; good news is information.
//! Texts are spoken to the member by a support agent: concrete, kind, short.

use super::facts::{
    arrived_at, delivered_at, reason_words, submitted_at, Facts, Lang, Observation, Predicted, Problem,
};
use super::{EvidenceRef, Finding, Severity};
use crate::carrier::{AbsentCause, Carrier, FailureCause, SettingKind};
use crate::clock::{self, Millis};
use crate::delivery::log::State;
use crate::member::{self, Channel};
use crate::otp::{Otp, OtpStatus};
use crate::smtp::mailbox::sender_allowed;

pub(crate) type Rule = fn(&Facts) -> Option<Finding>;

/// Every rule but `delivered_ok`, which depends on the others' verdicts.
pub(crate) const RULES: &[Rule] = &[
    sms_not_registered,
    sms_outside_japan,
    sender_id_differs,
    blocked_by_sms_filter,
    blocked_by_call_restriction,
    handset_storage_full,
    handset_unreachable,
    roaming_abroad,
    no_sms_plan,
    invalid_number,
    delivery_delayed,
    delivered_after_expiry,
    code_expired,
    code_already_used,
    superseded_code_entered,
    too_many_attempts,
    send_rate_limited,
    email_unknown_user,
    email_mailbox_full,
    email_domain_filter,
    email_delayed,
    gateway_error,
];

/// A message sent later than this after submission counts as delayed.
pub(crate) const DELAY_THRESHOLD_MS: Millis = 60_000;

fn finding(
    code: &'static str,
    severity: Severity,
    title: String,
    explanation: String,
    remediation: String,
    evidence: Vec<EvidenceRef>,
) -> Option<Finding> {
    Some(Finding {
        code,
        severity,
        title,
        explanation,
        remediation,
        evidence,
    })
}

/// The help page's four steps, from the step `from` (1 to 4).
fn four_steps(lang: Lang, from: usize) -> String {
    let steps_ja = [
        "ログイン後「My account」から「ワンタイムパスワード通知先の変更」を選ぶ",
        "「登録携帯電話番号の変更」に携帯電話番号を入力する",
        "携帯電話にSMSで届く認証コードで番号を認証する",
        "通知先を「携帯電話（SMS）」に設定する",
    ];
    let steps_en = [
        "log in and open My account → Change One-time Password notification destination",
        "enter the mobile number under Changing your registered mobile phone number",
        "confirm it with the verification code sent to the phone by SMS",
        "set the notification destination to Mobile Phone (SMS)",
    ];
    let from = from.clamp(1, 4);
    let ja: Vec<String> = (from..=4).map(|i| format!("{i}. {}", steps_ja[i - 1])).collect();
    let en: Vec<String> = (from..=4).map(|i| format!("{i}. {}", steps_en[i - 1])).collect();
    lang.pick(format!("{}。", ja.join("、")), format!("{}.", en.join("; ")))
}

fn validity_words(f: &Facts) -> String {
    let newest = f.case.otps.iter().max_by_key(|o| o.issued_at);
    let ms = newest.map(|o| o.expires_at - o.issued_at).unwrap_or(600_000);
    f.duration(ms)
}

// ----- registration -----

/// The destination is email, nothing, or an unconfirmed phone.
pub(crate) fn sms_not_registered(f: &Facts) -> Option<Finding> {
    let m = f.case.member?;
    if !m.lives_in_japan() {
        return None;
    }
    let l = f.lang;
    let phone = m.phone.as_ref();
    let verified = phone.is_some_and(|p| p.verified);
    if m.notification == Some(Channel::Sms) && verified {
        return None;
    }
    let masked_phone = phone.map(|p| member::mask_number(&p.number)).unwrap_or_default();
    let masked_email = m.email.as_deref().map(member::mask_email).unwrap_or_default();
    let evidence = vec![f.member_evidence(format!(
        "destination {}, phone {}, email {}",
        m.notification.map_or("none", Channel::as_str),
        match phone {
            Some(p) if p.verified => format!("{masked_phone} (verified)"),
            Some(_) => format!("{masked_phone} (not verified)"),
            None => "none".into(),
        },
        if masked_email.is_empty() { "none" } else { &masked_email },
    ))];
    if m.destination().is_err() {
        let unconfirmed = match phone {
            Some(p) if !p.verified => l.pick(
                format!("携帯電話番号 {masked_phone} は入力されていますが、まだ認証されていません。"),
                format!(" The number {masked_phone} was entered but never confirmed."),
            ),
            _ => String::new(),
        };
        return finding(
            "sms_not_registered",
            Severity::Error,
            l.pick(
                "ワンタイムパスワードの通知先が設定されていません",
                "No notification destination is set, so no code can be sent",
            ),
            l.pick(
                format!("通知先として使えるメールアドレスも認証済みの携帯電話番号もないため、コードを送れません。{unconfirmed}"),
                format!(
                    "There is no email address and no confirmed mobile number to send the code to.{unconfirmed}"
                ),
            ),
            l.pick(
                format!(
                    "メールアドレスを登録するか、SMSを登録してください。{}",
                    four_steps(l, if unconfirmed.is_empty() { 1 } else { 3 })
                ),
                format!(
                    "Register an email address, or register the mobile number for SMS: {}",
                    four_steps(l, if unconfirmed.is_empty() { 1 } else { 3 })
                ),
            ),
            evidence,
        );
    }
    // Codes go to the email address.
    match phone {
        Some(p) if !p.verified => finding(
            "sms_not_registered",
            Severity::Warning,
            l.pick(
                "携帯電話番号の認証が済んでいないため、コードはメールに届きます",
                "The mobile number is not confirmed yet, so codes go to email",
            ),
            l.pick(
                format!("携帯電話番号 {masked_phone} は入力されていますが、SMSの認証コードでの認証が済んでいません。そのためワンタイムパスワードはメール（{masked_email}）に送られています。"),
                format!("The number {masked_phone} was entered, but never confirmed with the verification code sent by SMS. Until it is, one-time passwords go to the email address {masked_email}."),
            ),
            l.pick(
                format!("まずメール（{masked_email}）をご確認ください。SMSで受け取るには、次の手順を完了してください。{}", four_steps(l, 3)),
                format!("Check the email inbox ({masked_email}) first. To receive codes by SMS, finish the steps: {}", four_steps(l, 3)),
            ),
            evidence,
        ),
        Some(_) => finding(
            "sms_not_registered",
            Severity::Warning,
            l.pick(
                "通知先がメールのため、コードはSMSではなくメールに届きます",
                "The destination is email, so codes go to email, not SMS",
            ),
            l.pick(
                format!("携帯電話番号 {masked_phone} は認証済みですが、通知先がメール（{masked_email}）になっているため、ワンタイムパスワードはメールに送られています。"),
                format!("The number {masked_phone} is confirmed, but the notification destination is email, so one-time passwords are sent to {masked_email}."),
            ),
            l.pick(
                format!("メール（{masked_email}）をご確認ください。SMSで受け取るには、{}", four_steps(l, 4)),
                format!("Check the email inbox ({masked_email}). To receive codes by SMS instead: {}", four_steps(l, 4)),
            ),
            evidence,
        ),
        None => finding(
            "sms_not_registered",
            Severity::Info,
            l.pick(
                "SMSは未登録のため、コードはメールに届きます",
                "No number is registered for SMS, so codes go to email",
            ),
            l.pick(
                format!("SMS用の携帯電話番号が登録されていないため、ワンタイムパスワードはメール（{masked_email}）に送られています。"),
                format!("No mobile number is registered for SMS, so one-time passwords are sent to the email address {masked_email}."),
            ),
            l.pick(
                format!("メール（{masked_email}）をご確認ください。SMSで受け取るには、次の4ステップで登録してください。{}", four_steps(l, 1)),
                format!("Check the email inbox ({masked_email}). To receive codes by SMS, register the number in 4 steps: {}", four_steps(l, 1)),
            ),
            evidence,
        ),
    }
}

/// SMS is only for members living in Japan.
pub(crate) fn sms_outside_japan(f: &Facts) -> Option<Finding> {
    let m = f.case.member?;
    if m.lives_in_japan() {
        return None;
    }
    let l = f.lang;
    let tried_sms = m.phone.is_some()
        || m.notification == Some(Channel::Sms)
        || f.messages.iter().any(|msg| msg.channel == Channel::Sms);
    let severity = if tried_sms { Severity::Warning } else { Severity::Info };
    let residence = m.residence.clone();
    let email = m.email.as_deref().map(member::mask_email).unwrap_or_default();
    let goes_to = if email.is_empty() {
        l.pick(
            "メールアドレスも未登録です。",
            " No email address is registered either.",
        )
    } else {
        l.pick(
            format!("コードはメール（{email}）に送られます。"),
            format!(" Codes go to the email address {email}."),
        )
    };
    finding(
        "sms_outside_japan",
        severity,
        l.pick(
            "SMSは日本にお住まいの会員さま専用です",
            "SMS is only for members living in Japan",
        ),
        l.pick(
            format!("お住まいの国・地域が {residence} のため、ワンタイムパスワードをSMSで受け取ることはできません。{goes_to}"),
            format!("The country of residence is {residence}, and one-time passwords by SMS are only for members living in Japan.{goes_to}"),
        ),
        l.pick(
            "通知先はメールをご利用ください。メールアドレスが正しいかは、マイレージトップページからログインし「Manage your account」の「Register/Change email address」（PCのみ）で確認できます。日本に転居された場合は、先にお住まいの国・地域を変更してください。",
            "Use email as the notification destination, and check that the address is right: log in from the Mileage Top page (select your country/region first) and open Register/Change email address under Manage your account (PC only). If the member has moved to Japan, change the country of residence first.",
        ),
        vec![f.member_evidence(format!("residence {residence}"))],
    )
}

/// SoftBank-network phones show the short code, not the number.
pub(crate) fn sender_id_differs(f: &Facts) -> Option<Finding> {
    let carrier = f.carrier?;
    let shown = f.shown_sender();
    let number = f.number();
    if carrier.shows_fixed_line_numbers || shown == number {
        return None;
    }
    let sms: Vec<_> = f.messages.iter().filter(|m| m.channel == Channel::Sms).collect();
    if !f.sms_in_use && sms.is_empty() {
        return None;
    }
    let l = f.lang;
    let name = f.carrier_name(carrier);
    let host = f
        .case
        .carriers
        .host_of(&carrier.id)
        .map(|h| f.carrier_name(h))
        .unwrap_or_else(|| name.clone());
    let mut evidence = Vec::new();
    if f.case.handset.is_some() {
        let host_id = f
            .case
            .carriers
            .host_of(&carrier.id)
            .map_or(carrier.id.as_str(), |h| h.id.as_str());
        let mut e = f.handset_evidence(&format!("on the {host_id} network, shows OTP SMS from {shown}"));
        e.at = None;
        evidence.push(e);
    }
    for msg in sms.iter().rev().take(3) {
        let detail = match delivered_at(msg) {
            Some(at) => format!(
                "SMS shown from {} on the phone, delivered at {}",
                msg.from,
                clock::rfc3339(at)
            ),
            None => format!("SMS sent as from {}, {}", msg.from, msg.state.as_str()),
        };
        evidence.push(f.message_evidence(msg, detail));
    }
    let network = if host == name {
        String::new()
    } else {
        l.pick(format!("（{host}回線）"), format!(" (on the {host} network)"))
    };
    finding(
        "sender_id_differs",
        Severity::Warning,
        l.pick(
            format!("SMSの送信元は {number} ではなく {shown} と表示されます"),
            format!("The SMS shows as from {shown}, not {number}"),
        ),
        l.pick(
            format!("{name}{network}では固定電話番号がSMSの送信元として表示されないため、ワンタイムパスワードは「{shown}」から届きます。{number} からのSMSを探しても見つかりません。"),
            format!("{name}{network} does not show fixed-line numbers as SMS senders, so the one-time password arrives from {shown}. Looking for a message from {number} will not find it."),
        ),
        l.pick(
            format!("メッセージアプリで「{shown}」からのSMSを探してください。SMSの拒否・許可設定をしている場合は、{number} ではなく「{shown}」を許可してください。"),
            format!("Look in the messages app for the SMS from {shown}. If the phone filters SMS, allow {shown} (not {number})."),
        ),
        evidence,
    )
}

// ----- SMS delivery failures -----

/// The carrier whose settings the member changes: the phone's now, else the
/// one the failed message went through.
fn settings_carrier<'a>(f: &Facts<'a>, observed: &[Observation<'a>]) -> Option<&'a Carrier> {
    f.carrier.or_else(|| {
        observed
            .iter()
            .rev()
            .find_map(|o| o.msg.carrier.as_deref().and_then(|c| f.case.carriers.get(c)))
    })
}

fn predicted_failures(f: &Facts, keep: impl Fn(FailureCause) -> bool) -> Vec<FailureCause> {
    if !f.sms_in_use {
        return Vec::new();
    }
    f.predicted
        .iter()
        .filter_map(|p| match p {
            Predicted::Failed(c) if keep(*c) => Some(*c),
            _ => None,
        })
        .collect()
}

fn handset_detail(cause: FailureCause) -> &'static str {
    match cause {
        FailureCause::RejectAll => "filters.reject_all on",
        FailureCause::BlockedSender => "the sender is in filters.blocked_senders",
        FailureCause::RejectOtherDomestic => "filters.reject_other_domestic on",
        FailureCause::ContentFilter => "filters.content_filter on",
        FailureCause::CallRestriction => "call_restriction on",
        FailureCause::StorageFull => "storage_full",
        FailureCause::NoSmsPlan => "sms_plan off (data-only SIM)",
        FailureCause::UnknownSubscriber => "in_service off (no subscriber)",
        FailureCause::ChaosFailure => "system failure",
    }
}

fn newest<'a, 'b>(observed: &'b [Observation<'a>]) -> Option<&'b Observation<'a>> {
    observed.iter().max_by_key(|o| o.ev.at)
}

/// What the phone's SMS filter did, or will do.
pub(crate) fn blocked_by_sms_filter(f: &Facts) -> Option<Finding> {
    let observed = f.observed(|p| matches!(p, Problem::Filter(_)));
    let predicted = predicted_failures(f, |c| c.setting().is_some() && c != FailureCause::CallRestriction);
    if observed.is_empty() && predicted.is_empty() {
        return None;
    }
    let l = f.lang;
    let carrier = settings_carrier(f, &observed);
    let shown = match carrier {
        Some(c) => c.displayed_sender(&f.case.profile.number, f.case.profile),
        None => f.shown_sender(),
    };
    // The settings to change: the one the log names, then what the handset has on.
    let mut kinds: Vec<SettingKind> = Vec::new();
    let logged = observed.iter().rev().find_map(|o| match o.problem {
        Problem::Filter(Some(kind)) => Some(kind),
        _ => None,
    });
    kinds.extend(logged);
    for cause in &predicted {
        if let Some(kind) = cause.setting() {
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
    }
    let mut evidence: Vec<EvidenceRef> = observed.iter().map(|o| f.event_evidence(o)).collect();
    evidence.extend(predicted.iter().map(|c| f.handset_evidence(handset_detail(*c))));
    let carrier_words = f.carrier_words(carrier);
    let setting_names: Vec<String> = match carrier {
        Some(c) => kinds.iter().map(|k| c.setting(*k).name(l.code()).to_string()).collect(),
        None => Vec::new(),
    };
    let names = if setting_names.is_empty() {
        l.pick("SMS拒否設定", "the phone's SMS rejection settings")
    } else {
        setting_names
            .iter()
            .map(|n| l.pick(quote_ja(n), n.clone()))
            .collect::<Vec<_>>()
            .join(&l.pick("、", "; "))
    };
    let (severity, note) = if observed.is_empty() {
        (Severity::Warning, String::new())
    } else {
        f.failure_severity(Channel::Sms, &observed)
    };
    let explanation = match newest(&observed) {
        Some(o) => l.pick(
            format!(
                "{} に送ったSMSは、携帯電話の{}によって拒否されました（{}）。この携帯電話ではワンタイムパスワードは「{shown}」から届きます。{note}",
                f.when(o.ev.at),
                names,
                super::facts::protocol_codes(o.ev),
            ),
            format!(
                "{carrier_words} rejected the SMS sent at {} because of {} on the phone ({}). On this phone the code comes from {shown}.{note}",
                f.when(o.ev.at),
                names,
                super::facts::protocol_codes(o.ev),
            ),
        ),
        None => l.pick(
            format!("携帯電話で{names}が有効になっているため、「{shown}」からのSMSは拒否されます。"),
            format!("The phone has {names} on, which rejects SMS from {shown}."),
        ),
    };
    let remediation = match carrier {
        Some(c) => {
            let kinds = if kinds.is_empty() {
                vec![SettingKind::AllowedSenders]
            } else {
                kinds.clone()
            };
            let steps: Vec<String> = kinds
                .iter()
                .map(|k| c.remediation(*k, l.code(), f.case.profile, &f.mail_domain()))
                .collect();
            l.pick(
                format!(
                    "{}ワンタイムパスワードの送信元は「{shown}」です。この送信元を受信できるようにしてから、新しいコードを発行してください。",
                    steps.join("")
                ),
                format!(
                    "{} The code comes from {shown}: make sure that exact sender is allowed, then request a new code.",
                    steps.join(" ")
                ),
            )
        }
        None => l.pick(
            format!("携帯電話または携帯電話会社のSMS拒否設定（ドコモ「SMS拒否設定」、au「迷惑SMSブロック」、ソフトバンク「迷惑SMSブロック設定」など）で「{shown}」からのSMSを受信できるようにしてから、新しいコードを発行してください。"),
            format!("In the SMS rejection settings of the phone or the carrier (docomo: SMS拒否設定, au: 迷惑SMSブロック, SoftBank: 迷惑SMSブロック設定), allow SMS from {shown}, then request a new code."),
        ),
    };
    let title = match setting_names.first() {
        Some(name) => l.pick(
            format!("SMSの拒否設定でコードが届きません：{name}"),
            format!("The phone's SMS filter rejects the code: {name}"),
        ),
        None => l.pick(
            "SMSの拒否設定でコードが届きません",
            "The phone's SMS filter rejects the code",
        ),
    };
    finding(
        "blocked_by_sms_filter",
        severity,
        title,
        explanation,
        remediation,
        evidence,
    )
}

/// The incoming-call restriction refuses the sender's number, and with it
/// its SMS.
pub(crate) fn blocked_by_call_restriction(f: &Facts) -> Option<Finding> {
    let observed = f.observed(|p| matches!(p, Problem::CallRestriction));
    let predicted = predicted_failures(f, |c| c == FailureCause::CallRestriction);
    if observed.is_empty() && predicted.is_empty() {
        return None;
    }
    let l = f.lang;
    let carrier = settings_carrier(f, &observed);
    let number = f.number();
    let shown = match carrier {
        Some(c) => c.displayed_sender(&f.case.profile.number, f.case.profile),
        None => f.shown_sender(),
    };
    let mut evidence: Vec<EvidenceRef> = observed.iter().map(|o| f.event_evidence(o)).collect();
    evidence.extend(predicted.iter().map(|c| f.handset_evidence(handset_detail(*c))));
    let setting = carrier.map(|c| c.setting(SettingKind::CallRestriction).name(l.code()).to_string());
    let setting_words = match &setting {
        Some(n) => l.pick(quote_ja(n), n.clone()),
        None => l.pick("着信拒否設定", "the call blocking settings"),
    };
    let (severity, note) = if observed.is_empty() {
        (Severity::Warning, String::new())
    } else {
        f.failure_severity(Channel::Sms, &observed)
    };
    let explanation = match newest(&observed) {
        Some(o) => l.pick(
            format!(
                "{number} からの着信が{setting_words}で拒否されているため、{} に送ったSMSも届きませんでした（{}）。着信拒否した番号からのSMSは届きません。{note}",
                f.when(o.ev.at),
                super::facts::protocol_codes(o.ev)
            ),
            format!(
                "Calls from {number} are blocked by {setting_words}, so the SMS sent at {} was refused too ({}). A blocked number's SMS does not arrive.{note}",
                f.when(o.ev.at),
                super::facts::protocol_codes(o.ev)
            ),
        ),
        None => l.pick(
            format!("{number} からの着信が{setting_words}で拒否されているため、この番号からのSMSも届きません。"),
            format!("Calls from {number} are blocked by {setting_words}, so SMS from this number will not arrive either."),
        ),
    };
    let shows_as = if shown != number {
        l.pick(
            format!("この携帯電話では、SMSの送信元は「{shown}」と表示されます。"),
            format!(" On this phone its SMS then shows as from {shown}."),
        )
    } else {
        String::new()
    };
    let carrier_steps = carrier
        .map(|c| c.remediation(SettingKind::CallRestriction, l.code(), f.case.profile, &f.mail_domain()))
        .unwrap_or_default();
    let remediation = l.pick(
        format!("{carrier_steps}着信拒否の設定で「{number}」からの着信を受けられるようにしてから、新しいコードを発行してください。{shows_as}詳しい設定方法はご契約の携帯電話会社にお問い合わせください。"),
        format!("{carrier_steps} Allow calls from {number} in the call blocking settings, then request a new code.{shows_as} The carrier can help with the setting."),
    );
    finding(
        "blocked_by_call_restriction",
        severity,
        l.pick(
            format!("{number} からの着信拒否でSMSが届きません"),
            format!("Calls from {number} are blocked, and so is its SMS"),
        ),
        explanation,
        remediation.trim().to_string(),
        evidence,
    )
}

/// A setting name in Japanese brackets, unless it has its own already.
fn quote_ja(name: &str) -> String {
    if name.contains('「') {
        name.to_string()
    } else {
        format!("「{name}」")
    }
}

/// The common shape of a handset failure with one cause.
struct Simple {
    code: &'static str,
    title: (&'static str, &'static str),
    /// With `{when}` and `{codes}`.
    seen: (&'static str, &'static str),
    now: (&'static str, &'static str),
    remediation: (&'static str, &'static str),
}

fn simple_handset_failure(f: &Facts, spec: Simple, problem: Problem, cause: FailureCause) -> Option<Finding> {
    let observed = f.observed(|p| *p == problem);
    let predicted = predicted_failures(f, |c| c == cause);
    if observed.is_empty() && predicted.is_empty() {
        return None;
    }
    let l = f.lang;
    let mut evidence: Vec<EvidenceRef> = observed.iter().map(|o| f.event_evidence(o)).collect();
    evidence.extend(predicted.iter().map(|c| f.handset_evidence(handset_detail(*c))));
    let (severity, note) = if observed.is_empty() {
        (Severity::Warning, String::new())
    } else {
        f.failure_severity(Channel::Sms, &observed)
    };
    let explanation = match newest(&observed) {
        Some(o) => {
            let fill = |s: &str| {
                s.replace("{when}", &f.when(o.ev.at))
                    .replace("{codes}", &super::facts::protocol_codes(o.ev))
            };
            format!("{}{note}", l.pick(fill(spec.seen.0), fill(spec.seen.1)))
        }
        None => l.pick(spec.now.0, spec.now.1),
    };
    finding(
        spec.code,
        severity,
        l.pick(spec.title.0, spec.title.1),
        explanation,
        l.pick(spec.remediation.0, spec.remediation.1),
        evidence,
    )
}

pub(crate) fn handset_storage_full(f: &Facts) -> Option<Finding> {
    simple_handset_failure(
        f,
        Simple {
            code: "handset_storage_full",
            title: ("携帯電話のSMS保存容量がいっぱいです", "The phone's message storage is full"),
            seen: (
                "{when} に送ったSMSは、携帯電話のメッセージ保存容量がいっぱいのため届きませんでした（{codes}、memory capacity exceeded）。",
                "The SMS sent at {when} could not be delivered because the phone's message storage is full ({codes}, memory capacity exceeded).",
            ),
            now: (
                "携帯電話のメッセージ保存容量がいっぱいのため、新しいSMSを受信できません。",
                "The phone's message storage is full, so new SMS cannot arrive.",
            ),
            remediation: (
                "不要なSMSを削除して空き容量を作ってから、新しいコードを発行してください。",
                "Delete old SMS messages on the phone to make room, then request a new code.",
            ),
        },
        Problem::StorageFull,
        FailureCause::StorageFull,
    )
}

pub(crate) fn no_sms_plan(f: &Facts) -> Option<Finding> {
    simple_handset_failure(
        f,
        Simple {
            code: "no_sms_plan",
            title: ("SMSを受信できない回線（データ専用SIM）です", "The line cannot receive SMS (data-only SIM)"),
            seen: (
                "{when} に送ったSMSは、回線にSMSの契約がないため届きませんでした（{codes}、teleservice not provisioned）。データ専用SIMではSMSを受信できません。",
                "The SMS sent at {when} could not be delivered because the line has no SMS service ({codes}, teleservice not provisioned). A data-only SIM cannot receive SMS.",
            ),
            now: (
                "この回線はSMSの契約がない（データ専用SIM）ため、SMSを受信できません。",
                "The line has no SMS service (a data-only SIM), so it cannot receive SMS.",
            ),
            remediation: (
                "通知先をメールに変更するか、SMSが使える回線（音声通話またはSMSオプション付き）の番号を登録し直してください。",
                "Set the notification destination to email, or register a number whose line has SMS (voice or an SMS option).",
            ),
        },
        Problem::NoSmsPlan,
        FailureCause::NoSmsPlan,
    )
}

fn absent_words(lang: Lang, cause: Option<AbsentCause>) -> String {
    match cause {
        Some(c) => reason_words(lang, c.code()),
        None => lang.pick("電源が切れているか圏外", "the phone is switched off or out of coverage"),
    }
}

/// Absent observations on messages that never arrived.
fn stuck<'a>(f: &Facts<'a>, keep: impl Fn(Option<AbsentCause>) -> bool) -> Vec<Observation<'a>> {
    f.observed(|p| matches!(p, Problem::Absent { cause, .. } if keep(*cause)))
        .into_iter()
        // A message that later arrived, or failed for another reason once
        // the phone was back, is explained by other findings.
        .filter(|o| delivered_at(o.msg).is_none() && !matches!(o.msg.state, State::Failed | State::Rejected))
        .collect()
}

fn stuck_explanation(f: &Facts, o: &Observation) -> String {
    let l = f.lang;
    let (cause, done) = match o.problem {
        Problem::Absent { cause, done } => (cause, done),
        _ => (None, false),
    };
    let words = absent_words(l, cause);
    let codes = super::facts::protocol_codes(o.ev);
    let codes_ja = if codes.is_empty() {
        String::new()
    } else {
        format!("、{codes}")
    };
    let codes_en = if codes.is_empty() {
        String::new()
    } else {
        format!("; {codes}")
    };
    if done {
        l.pick(
            format!(
                "{} に送ったSMSは、携帯電話に届けられないまま（{words}）、{} に配信を打ち切られました（{}）。",
                f.when(o.msg.created_at),
                f.when(o.ev.at),
                codes
            ),
            format!(
                "The SMS sent at {} could not reach the phone ({words}); the network gave up at {} ({codes}).",
                f.when(o.msg.created_at),
                f.when(o.ev.at)
            ),
        )
    } else {
        let next = o.ev.next_attempt_at.map(|t| f.when(t));
        l.pick(
            format!(
                "{} に送ったSMSは、{} の時点で携帯電話に届けられませんでした（{words}{codes_ja}）。ネットワークが再送を続けています{}。",
                f.when(o.msg.created_at),
                f.when(o.ev.at),
                next.as_deref().map(|t| format!("（次回 {t}）")).unwrap_or_default()
            ),
            format!(
                "The SMS sent at {} could not reach the phone at {} ({words}{codes_en}). The network keeps retrying{}.",
                f.when(o.msg.created_at),
                f.when(o.ev.at),
                next.as_deref().map(|t| format!(", next at {t}")).unwrap_or_default()
            ),
        )
    }
}

/// Switched off or out of coverage: retrying, EXPIRED, or off right now.
pub(crate) fn handset_unreachable(f: &Facts) -> Option<Finding> {
    let observed = stuck(f, |c| c != Some(AbsentCause::AbroadNoRoaming));
    let now: Vec<AbsentCause> = if f.sms_in_use {
        f.predicted
            .iter()
            .filter_map(|p| match p {
                Predicted::Absent(c) if *c != AbsentCause::AbroadNoRoaming => Some(*c),
                _ => None,
            })
            .collect()
    } else {
        Vec::new()
    };
    if observed.is_empty() && now.is_empty() {
        return None;
    }
    let l = f.lang;
    let mut evidence: Vec<EvidenceRef> = observed.iter().map(|o| f.event_evidence(o)).collect();
    evidence.extend(now.iter().map(|c| f.handset_evidence(c.code())));
    let (severity, note) = if observed.is_empty() {
        (Severity::Warning, String::new())
    } else {
        f.failure_severity(Channel::Sms, &observed)
    };
    let now_words = if now.is_empty() {
        String::new()
    } else {
        let words: Vec<String> = now.iter().map(|c| absent_words(l, Some(*c))).collect();
        l.pick(
            format!("現在も携帯電話は{}状態です。", words.join("・")),
            format!(" Right now {}.", words.join(" and ")),
        )
    };
    let explanation = match newest(&observed) {
        Some(o) => format!("{}{now_words}{note}", stuck_explanation(f, o)),
        None => l.pick(
            format!("{}そのため、SMSは携帯電話に届きません。", now_words),
            format!("{} SMS cannot reach the phone until that changes.", now_words.trim()),
        ),
    };
    finding(
        "handset_unreachable",
        severity,
        l.pick("携帯電話に接続できません（電源オフ・圏外）", "The phone could not be reached (off or no signal)"),
        explanation.trim().to_string(),
        l.pick(
            format!("携帯電話の電源が入っていること、機内モードになっていないこと、電波の届く場所にいることを確認してから、新しいコードを発行してください。コードの有効期限は{}です。", validity_words(f)),
            format!("Check that the phone is switched on, not in airplane mode, and has signal, then request a new code. A code is valid for {}, even if its SMS arrives later.", validity_words(f)),
        ),
        evidence,
    )
}

/// Abroad: without roaming nothing arrives; with it, SMS may be late or lost.
pub(crate) fn roaming_abroad(f: &Facts) -> Option<Finding> {
    let observed = stuck(f, |c| c == Some(AbsentCause::AbroadNoRoaming));
    let now: Vec<Predicted> = if f.sms_in_use {
        f.predicted
            .iter()
            .filter(|p| matches!(p, Predicted::Absent(AbsentCause::AbroadNoRoaming) | Predicted::Roaming))
            .copied()
            .collect()
    } else {
        Vec::new()
    };
    if observed.is_empty() && now.is_empty() {
        return None;
    }
    let l = f.lang;
    let roaming_on = now.contains(&Predicted::Roaming);
    let mut evidence: Vec<EvidenceRef> = observed.iter().map(|o| f.event_evidence(o)).collect();
    evidence.extend(now.iter().map(|p| {
        f.handset_evidence(if *p == Predicted::Roaming {
            "abroad, roaming on"
        } else {
            "abroad, roaming off"
        })
    }));
    let (severity, note) = if observed.is_empty() {
        (Severity::Warning, String::new())
    } else {
        f.failure_severity(Channel::Sms, &observed)
    };
    let explanation = match newest(&observed) {
        Some(o) => format!("{}{note}", stuck_explanation(f, o)),
        None if roaming_on => l.pick(
            "携帯電話は海外にあります（ローミングはオン）。日本国外ではSMSが遅れたり届かなかったりすることがあります。",
            "The phone is abroad with roaming on. Outside Japan, SMS may be late or may not arrive.",
        ),
        None => l.pick(
            "携帯電話は海外にあり、ローミングがオフのため、SMSを受信できません。",
            "The phone is abroad with roaming off, so SMS cannot reach it.",
        ),
    };
    finding(
        "roaming_abroad",
        severity,
        l.pick("携帯電話が日本国外にあります", "The phone is outside Japan"),
        explanation,
        l.pick(
            "日本国外ではSMSが届かないことがあります。海外滞在中は通知先をメールに変更するか、携帯電話の国際ローミングを有効にしてから新しいコードを発行してください。それでも届かない場合はご契約の携帯電話会社にご確認ください。",
            "SMS may not arrive outside Japan. While abroad, set the notification destination to email, or turn on international roaming and request a new code. If SMS still does not arrive, the carrier can check the line.",
        ),
        evidence,
    )
}

/// Unknown subscriber, or a destination the SMSC refused.
pub(crate) fn invalid_number(f: &Facts) -> Option<Finding> {
    let observed = f.observed(|p| *p == Problem::UnknownNumber);
    let predicted = predicted_failures(f, |c| c == FailureCause::UnknownSubscriber);
    let l = f.lang;
    // A looked-up destination that is no mobile number at all.
    let bad_lookup = match (f.case.member, f.case.destination) {
        (None, Some(d)) if !d.contains('@') => member::parse_mobile(d).is_err(),
        _ => false,
    };
    if observed.is_empty() && !bad_lookup && predicted.is_empty() {
        return None;
    }
    let masked = f.masked_phone();
    let mut evidence: Vec<EvidenceRef> = observed.iter().map(|o| f.event_evidence(o)).collect();
    evidence.extend(predicted.iter().map(|c| f.handset_evidence(handset_detail(*c))));
    if bad_lookup {
        evidence.push(EvidenceRef {
            kind: "member",
            id: masked.clone(),
            at: None,
            detail: "not a Japanese mobile number (070, 080, 090 or 060, 11 digits)".into(),
        });
    }
    let (severity, note) = if !observed.is_empty() {
        f.failure_severity(Channel::Sms, &observed)
    } else if bad_lookup {
        (Severity::Error, String::new())
    } else {
        (Severity::Warning, String::new())
    };
    let explanation = match newest(&observed) {
        None if !bad_lookup => l.pick(
            format!("{masked} は現在使われていない番号です（解約済み・番号変更など）。この番号にはSMSが届きません。"),
            format!("The number {masked} is not in service (cancelled or changed), so SMS cannot reach it."),
        ),
        Some(o) => l.pick(
            format!(
                "{} に {masked} へ送ったSMSは、この番号が使われていないか宛先として正しくないため届きませんでした（{}）。{note}",
                f.when(o.ev.at),
                super::facts::protocol_codes(o.ev)
            ),
            format!(
                "The SMS sent to {masked} at {} was refused: the number is not in service or not a valid destination ({}).{note}",
                f.when(o.ev.at),
                super::facts::protocol_codes(o.ev)
            ),
        ),
        None => l.pick(
            format!("{masked} は日本の携帯電話番号（070・080・090・060で始まる11桁）ではないため、SMSを受信できません。"),
            format!("{masked} is not a Japanese mobile number (11 digits starting 070, 080, 090 or 060), so it cannot receive SMS."),
        ),
    };
    finding(
        "invalid_number",
        severity,
        l.pick("登録された携帯電話番号にSMSを送れません", "The registered number cannot receive SMS"),
        explanation,
        l.pick(
            format!("登録されている携帯電話番号（{masked}）が正しいか会員さまにご確認ください。誤っている場合は正しい番号を登録し直してください。{}", four_steps(l, 1)),
            format!("Check the registered mobile number ({masked}) with the member. If it is wrong, register the right one: {}", four_steps(l, 1)),
        ),
        evidence,
    )
}

// ----- timing -----

/// The OTP a message carried.
fn otp_of<'a>(f: &Facts<'a>, msg: &crate::delivery::log::Message) -> Option<&'a Otp> {
    msg.otp_id.as_deref().and_then(|id| f.otp(id))
}

/// Why a delivered message waited, when the network logged absent retries.
fn waited_because(f: &Facts, msg: &crate::delivery::log::Message) -> String {
    match super::facts::last_absent_cause(msg) {
        Some(cause) => f.lang.pick(
            format!(
                "それまでは{}ため届けられませんでした。",
                absent_words(f.lang, Some(cause))
            ),
            format!(
                " Until then it could not reach the phone: {}.",
                absent_words(f.lang, Some(cause))
            ),
        ),
        None => String::new(),
    }
}

/// Delivered long after submission, or still on its way after long.
pub(crate) fn delivery_delayed(f: &Facts) -> Option<Finding> {
    let l = f.lang;
    let mut evidence = Vec::new();
    let mut newest: Option<(Millis, String)> = None;
    for msg in f.messages.iter().filter(|m| m.channel == Channel::Sms) {
        let submitted = submitted_at(msg);
        let expires = otp_of(f, msg).map(|o| o.expires_at);
        let has_problem = f
            .observations
            .iter()
            .any(|o| std::ptr::eq(o.msg, *msg) && !matches!(o.problem, Problem::Delivered));
        let (at, line) = match delivered_at(msg) {
            Some(done) if done - submitted > DELAY_THRESHOLD_MS => {
                if expires.is_some_and(|e| done >= e) {
                    continue; // delivered_after_expiry tells this one
                }
                let took = f.duration(done - submitted);
                (
                    done,
                    l.pick(
                        format!(
                            "{} に送ったSMSが携帯電話に届いたのは {}、{took}後でした。",
                            f.when(submitted),
                            f.when(done)
                        ),
                        format!(
                            "The SMS sent at {} reached the phone at {}, {took} later.",
                            f.when(submitted),
                            f.when(done)
                        ),
                    ),
                )
            }
            None if !msg.state.is_final() && !has_problem && f.case.now - submitted > DELAY_THRESHOLD_MS => {
                let took = f.duration(f.case.now - submitted);
                (
                    f.case.now,
                    l.pick(
                        format!("{} に送ったSMSは、{took}たった今もまだ配信中です。", f.when(submitted)),
                        format!(
                            "The SMS sent at {} is still on its way, {took} later.",
                            f.when(submitted)
                        ),
                    ),
                )
            }
            _ => continue,
        };
        let line = format!("{line}{}", waited_because(f, msg));
        evidence.push(EvidenceRef {
            kind: "message",
            id: msg.id.clone(),
            at: Some(at),
            detail: format!(
                "submitted at {}, {} at {}",
                clock::rfc3339(submitted),
                if at == f.case.now && delivered_at(msg).is_none() {
                    "still in flight"
                } else {
                    "delivered"
                },
                clock::rfc3339(at)
            ),
        });
        if newest.as_ref().is_none_or(|(t, _)| at >= *t) {
            newest = Some((at, line));
        }
    }
    let (_, line) = newest?;
    finding(
        "delivery_delayed",
        Severity::Warning,
        l.pick("SMSの到着に時間がかかっています", "The SMS took a long time to arrive"),
        line,
        l.pick(
            format!("SMSの受信には時間がかかることがあります。少し待ってからもう一度SMSの受信ボックスをご確認ください。コードの有効期限（{}）が過ぎていたら、新しいコードを発行してください。", validity_words(f)),
            format!("SMS can take a while. Wait a moment and check the SMS inbox again; if the code is older than {} by then, request a new one.", validity_words(f)),
        ),
        evidence,
    )
}

/// The code arrived, but only after it had expired.
pub(crate) fn delivered_after_expiry(f: &Facts) -> Option<Finding> {
    let l = f.lang;
    let mut evidence = Vec::new();
    let mut newest: Option<(Millis, String)> = None;
    for msg in &f.messages {
        let (Some(otp), Some(done)) = (otp_of(f, msg), delivered_at(msg)) else {
            continue;
        };
        if done < otp.expires_at {
            continue;
        }
        let place = match msg.channel {
            Channel::Sms => l.pick("携帯電話", "the phone"),
            Channel::Email => l.pick("メールボックス", "the mailbox"),
        };
        evidence.push(EvidenceRef {
            kind: "message",
            id: msg.id.clone(),
            at: Some(done),
            detail: format!(
                "delivered at {}, after {} expired at {}",
                clock::rfc3339(done),
                otp.id,
                clock::rfc3339(otp.expires_at)
            ),
        });
        let line = l.pick(
            format!(
                "{} に発行したコードは {} に有効期限が切れましたが、{place}に届いたのはその後の {} でした。",
                f.when(otp.issued_at),
                f.when(otp.expires_at),
                f.when(done)
            ),
            format!(
                "The code requested at {} expired at {}, but reached {place} only at {}.",
                f.when(otp.issued_at),
                f.when(otp.expires_at),
                f.when(done)
            ),
        );
        let line = format!("{line}{}", waited_because(f, msg));
        if newest.as_ref().is_none_or(|(t, _)| done >= *t) {
            newest = Some((done, line));
        }
    }
    let (_, line) = newest?;
    finding(
        "delivered_after_expiry",
        Severity::Warning,
        l.pick(
            "コードが有効期限切れの後に届きました",
            "The code arrived after it had expired",
        ),
        line,
        l.pick(
            format!(
                "新しいコードを発行し、届いてから{}以内に入力してください。",
                validity_words(f)
            ),
            format!(
                "Request a new code and enter it within {} of the request.",
                validity_words(f)
            ),
        ),
        evidence,
    )
}

// ----- codes entered -----

/// The entries of every OTP with this result, newest last.
fn entries_with<'a>(f: &Facts<'a>, result: &str) -> Vec<(&'a Otp, &'a crate::otp::Entry)> {
    let mut out: Vec<_> = f
        .case
        .otps
        .iter()
        .flat_map(|o| o.entries.iter().map(move |e| (o, e)))
        .filter(|(_, e)| e.result == result)
        .collect();
    out.sort_by_key(|(_, e)| e.at);
    out
}

pub(crate) fn code_expired(f: &Facts) -> Option<Finding> {
    let found = entries_with(f, "expired");
    let (otp, entry) = *found.last()?;
    let l = f.lang;
    let evidence = found
        .iter()
        .map(|(o, e)| {
            f.otp_evidence(
                o,
                e.at,
                format!("code entered after expiry ({})", clock::rfc3339(o.expires_at)),
            )
        })
        .collect();
    let validity = f.duration(otp.expires_at - otp.issued_at);
    finding(
        "code_expired",
        Severity::Warning,
        l.pick("有効期限切れのコードが入力されました", "An expired code was entered"),
        l.pick(
            format!(
                "{} に発行したコードは {} に有効期限が切れていましたが、{} に入力されました。コードの有効期限は{validity}です。",
                f.when(otp.issued_at),
                f.when(otp.expires_at),
                f.when(entry.at)
            ),
            format!(
                "The code requested at {} was entered at {}, after it expired at {}. Codes are valid for {validity}.",
                f.when(otp.issued_at),
                f.when(entry.at),
                f.when(otp.expires_at)
            ),
        ),
        l.pick(
            format!("新しいコードを発行し、{validity}以内に入力してください。入力画面は閉じずにSMSやメールをご確認ください。"),
            format!("Request a new code and enter it within {validity}, keeping the entry screen open while checking SMS or email."),
        ),
        evidence,
    )
}

pub(crate) fn code_already_used(f: &Facts) -> Option<Finding> {
    let found = entries_with(f, "already_used");
    let (otp, entry) = *found.last()?;
    let l = f.lang;
    let evidence = found
        .iter()
        .map(|(o, e)| f.otp_evidence(o, e.at, "a used code entered again".to_string()))
        .collect();
    let used = otp
        .verified_at
        .map(|t| l.pick(format!("{} に使用済み", f.when(t)), format!("used at {}", f.when(t))))
        .unwrap_or_else(|| l.pick("使用済み", "already used"));
    finding(
        "code_already_used",
        Severity::Warning,
        l.pick("使用済みのコードがもう一度入力されました", "A code that was already used was entered again"),
        l.pick(
            format!(
                "{} に発行したコード（{used}）が、{} にもう一度入力されました。ワンタイムパスワードは一度しか使えません。",
                f.when(otp.issued_at),
                f.when(entry.at)
            ),
            format!(
                "The code requested at {} ({used}) was entered again at {}. A one-time password works only once.",
                f.when(otp.issued_at),
                f.when(entry.at)
            ),
        ),
        l.pick(
            "次の手続きには新しいコードを発行して、届いた最新のコードを入力してください。",
            "For the next step, request a new code and enter the newest one.",
        ),
        evidence,
    )
}

pub(crate) fn superseded_code_entered(f: &Facts) -> Option<Finding> {
    let found = entries_with(f, "superseded");
    let (otp, entry) = *found.last()?;
    let l = f.lang;
    let evidence = found
        .iter()
        .map(|(o, e)| {
            let detail = match &e.matched_otp {
                Some(old) => format!("the code of the older {old} entered"),
                None => "a code entered on a replaced entry screen".to_string(),
            };
            f.otp_evidence(o, e.at, detail)
        })
        .collect();
    // Which code was entered, and which one was the newest then.
    let (older, newer) = match &entry.matched_otp {
        Some(old) => (f.otp(old), Some(otp)),
        None => (Some(otp), otp.superseded_by.as_deref().and_then(|id| f.otp(id))),
    };
    let older_at = older.map(|o| f.when(o.issued_at));
    let newer_at = newer.map(|o| f.when(o.issued_at));
    let explanation = match (older_at, newer_at) {
        (Some(old), Some(new)) => l.pick(
            format!("{} に入力されたのは、{old} に発行した以前のコードでした。{new} に新しいコードを発行した時点で、それより前のコードは使えなくなっています。", f.when(entry.at)),
            format!("The code entered at {} was the one requested at {old}. A newer code was requested at {new}, and that replaces every earlier one.", f.when(entry.at)),
        ),
        _ => l.pick(
            format!("{} に入力されたのは、新しいコードの発行で使えなくなった以前のコードでした。", f.when(entry.at)),
            format!("The code entered at {} belonged to an earlier request that a newer code had replaced.", f.when(entry.at)),
        ),
    };
    finding(
        "superseded_code_entered",
        Severity::Warning,
        l.pick("以前のコードが入力されました", "An older code was entered"),
        format!(
            "{}{}",
            explanation,
            l.pick(
                "入力画面を閉じて開き直すと新しいコードが送られ、前のコードは使えなくなります。",
                " This happens when the entry screen is closed and opened again.",
            )
        ),
        l.pick(
            "いちばん新しいコードだけを入力してください。SMSやメールを確認するときは、入力画面を閉じないでください。",
            "Enter only the newest code, and keep the entry screen open while checking SMS or email: opening it again sends a new code and the earlier one stops working.",
        ),
        evidence,
    )
}

pub(crate) fn too_many_attempts(f: &Facts) -> Option<Finding> {
    let mut locked: Vec<&Otp> = f
        .case
        .otps
        .iter()
        .filter(|o| o.status == OtpStatus::Locked || o.entries.iter().any(|e| e.result == "locked"))
        .collect();
    locked.sort_by_key(|o| o.issued_at);
    let otp = *locked.last()?;
    let l = f.lang;
    let lock_at = |o: &Otp| {
        let mut wrong = 0;
        for e in &o.entries {
            if e.result == "invalid_code" || e.result == "superseded" {
                wrong += 1;
                if wrong >= o.max_attempts {
                    return e.at;
                }
            }
        }
        o.entries.last().map_or(o.issued_at, |e| e.at)
    };
    let evidence = locked
        .iter()
        .map(|o| f.otp_evidence(o, lock_at(o), format!("locked after {} wrong codes", o.attempts)))
        .collect();
    let newest_of_purpose = !f
        .case
        .otps
        .iter()
        .any(|o| o.purpose == otp.purpose && o.issued_at > otp.issued_at);
    let severity = if newest_of_purpose {
        Severity::Error
    } else {
        Severity::Warning
    };
    finding(
        "too_many_attempts",
        severity,
        l.pick(
            "誤ったコードの入力が続いたため、コードがロックされました",
            "Too many wrong codes: the code is locked",
        ),
        l.pick(
            format!(
                "{} に発行したコードに誤ったコードが{}回入力されたため、{} にロックされました。ロックされたコードは正しくても使えません。",
                f.when(otp.issued_at),
                otp.attempts,
                f.when(lock_at(otp))
            ),
            format!(
                "{} wrong codes were entered for the code requested at {}, so it was locked at {}. A locked code no longer works, even the right one.",
                otp.attempts,
                f.when(otp.issued_at),
                f.when(lock_at(otp))
            ),
        ),
        l.pick(
            format!("新しいコードを発行し、いちばん新しいSMS（送信元「{}」）またはメールのコードを入力してください。", f.shown_sender()),
            format!("Request a new code and enter the one in the newest SMS (from {}) or email.", f.shown_sender()),
        ),
        evidence,
    )
}

pub(crate) fn send_rate_limited(f: &Facts) -> Option<Finding> {
    let mut refusals: Vec<_> = f.case.refusals.iter().collect();
    refusals.sort_by_key(|r| r.at);
    let last = *refusals.last()?;
    let l = f.lang;
    let masked = |d: &str| {
        if d.contains('@') {
            member::mask_email(d)
        } else {
            member::mask_number(d)
        }
    };
    let evidence = refusals
        .iter()
        .map(|r| EvidenceRef {
            kind: "refusal",
            id: masked(&r.destination),
            at: Some(r.at),
            detail: format!(
                "send for `{}` refused, retry after {} s, at {}",
                r.purpose,
                r.retry_after,
                clock::rfc3339(r.at)
            ),
        })
        .collect();
    let latest_issue = f
        .case
        .otps
        .iter()
        .filter(|o| o.purpose == last.purpose)
        .map(|o| o.issued_at)
        .max();
    let waiting_for_nothing = latest_issue.is_none_or(|t| t < last.at);
    let severity = if waiting_for_nothing {
        Severity::Error
    } else {
        Severity::Warning
    };
    let retry_at = last.at + last.retry_after * 1000;
    let count = refusals.len();
    let explanation = l.pick(
        format!(
            "短時間にコードの送信を何度も依頼されたため、{count}件の依頼が送信制限でお断りされました（最後は {}）。お断りした依頼ではコードは送られていません。",
            f.when(last.at)
        ),
        format!(
            "{count} code request{} refused by the send limits, the last at {}, because codes were requested too often; no code was sent for {}.",
            if count == 1 { " was" } else { "s were" },
            f.when(last.at),
            if count == 1 { "it" } else { "them" }
        ),
    );
    let remediation = if let Some(later) = latest_issue.filter(|t| *t > last.at) {
        l.pick(
            format!("その後 {} の依頼ではコードを送っています。そのコードを入力し、届くまで少し待ってから次の依頼をしてください。", f.when(later)),
            format!("A later request, at {}, went through: enter the code from that one, and give a code a moment to arrive before asking again.", f.when(later)),
        )
    } else if retry_at > f.case.now {
        l.pick(
            format!("{} 以降（あと{}ほど）に、もう一度コードを発行してください。届いたら、いちばん新しいコードを入力してください。", f.when(retry_at), f.duration(retry_at - f.case.now)),
            format!("Wait until {} (about {} from now) before requesting a new code, then enter the newest code.", f.when(retry_at), f.duration(retry_at - f.case.now)),
        )
    } else {
        l.pick(
            "送信制限の待ち時間は過ぎています。コードを1回だけ発行し、届くまで少しお待ちください。",
            "The wait is over now: request one new code and give it a moment to arrive before asking again.",
        )
    };
    finding(
        "send_rate_limited",
        severity,
        l.pick(
            "コードの送信依頼が多すぎるため、送信をお断りしました",
            "A code request was refused: too many requests",
        ),
        explanation,
        remediation,
        evidence,
    )
}

// ----- email -----

fn email_failure(
    f: &Facts,
    code: &'static str,
    observed: Vec<Observation>,
    now: Option<&str>,
    texts: EmailTexts,
) -> Option<Finding> {
    if observed.is_empty() && now.is_none() {
        return None;
    }
    let l = f.lang;
    let mut evidence: Vec<EvidenceRef> = observed.iter().map(|o| f.event_evidence(o)).collect();
    if let Some(detail) = now {
        evidence.push(f.mailbox_evidence(detail));
    }
    let (severity, note) = if observed.is_empty() {
        (Severity::Warning, String::new())
    } else {
        f.failure_severity(Channel::Email, &observed)
    };
    let masked = f.masked_email();
    let explanation = match newest(&observed) {
        Some(o) => {
            let fill = |s: &str| {
                s.replace("{when}", &f.when(o.ev.at))
                    .replace("{codes}", &super::facts::protocol_codes(o.ev))
                    .replace("{address}", &masked)
            };
            format!("{}{note}", l.pick(fill(texts.seen.0), fill(texts.seen.1)))
        }
        None => l.pick(texts.now.0, texts.now.1).replace("{address}", &masked),
    };
    finding(
        code,
        severity,
        l.pick(texts.title.0, texts.title.1),
        explanation,
        l.pick(texts.remediation.0, texts.remediation.1)
            .replace("{address}", &masked),
        evidence,
    )
}

struct EmailTexts {
    title: (&'static str, &'static str),
    /// With `{when}`, `{codes}` and `{address}`.
    seen: (&'static str, &'static str),
    now: (&'static str, &'static str),
    remediation: (&'static str, &'static str),
}

pub(crate) fn email_unknown_user(f: &Facts) -> Option<Finding> {
    let observed = f.observed(|p| *p == Problem::EmailUnknownUser);
    let now = (f.email_in_use && f.case.mailbox.is_some_and(|m| !m.exists)).then_some("does not exist");
    email_failure(
        f,
        "email_unknown_user",
        observed,
        now,
        EmailTexts {
            title: (
                "登録されたメールアドレスは存在しません",
                "The registered email address does not exist",
            ),
            seen: (
                "{when} に {address} へ送ったメールは、宛先のメールサーバーから「このアドレスは存在しない」と返されました（{codes}）。",
                "The email sent to {address} at {when} was refused by the receiving server: the address does not exist ({codes}).",
            ),
            now: (
                "登録されたメールアドレス {address} は、宛先のメールサーバーに存在しません。",
                "The registered address {address} does not exist on its mail server.",
            ),
            remediation: (
                "登録されたメールアドレスが誤っている可能性があります。ヘルプデスクで登録アドレスを会員さまと一緒にご確認のうえ、「Register/Change email address」（PCのみ）から正しいアドレスに変更してください。",
                "The registered address may be mistyped. Check it with the member (the helpdesk can confirm the registered address), then correct it under Register/Change email address (PC only).",
            ),
        },
    )
}

pub(crate) fn email_mailbox_full(f: &Facts) -> Option<Finding> {
    let observed = f.observed(|p| *p == Problem::EmailFull);
    let now = (f.email_in_use && f.case.mailbox.is_some_and(|m| m.full)).then_some("full");
    email_failure(
        f,
        "email_mailbox_full",
        observed,
        now,
        EmailTexts {
            title: ("メールボックスがいっぱいです", "The mailbox is full"),
            seen: (
                "{when} に {address} へ送ったメールは、メールボックスの容量がいっぱいのため受け取られませんでした（{codes}）。",
                "The email sent to {address} at {when} was refused because the mailbox is full ({codes}).",
            ),
            now: (
                "メールボックス {address} の容量がいっぱいのため、新しいメールを受け取れません。",
                "The mailbox {address} is full, so new mail cannot arrive.",
            ),
            remediation: (
                "不要なメールを削除して容量を空けてから、新しいコードを発行してください。",
                "Delete old emails to free space in the mailbox, then request a new code.",
            ),
        },
    )
}

/// Refused or silently dropped by the domain allow-list, or put in spam.
pub(crate) fn email_domain_filter(f: &Facts) -> Option<Finding> {
    let filtered = f.observed(|p| matches!(p, Problem::EmailFiltered { .. }));
    let spam = f.observed(|p| *p == Problem::EmailSpam);
    let mailbox = f.case.mailbox.filter(|_| f.email_in_use);
    let filter_now = mailbox.filter(|m| !sender_allowed(&m.allowed_domains, f.case.email_from));
    let spam_now = mailbox.filter(|m| m.spam);
    if filtered.is_empty() && spam.is_empty() && filter_now.is_none() && spam_now.is_none() {
        return None;
    }
    let l = f.lang;
    let domain = f.mail_domain();
    let from = f.case.email_from;
    let masked = f.masked_email();
    let mut evidence: Vec<EvidenceRef> = filtered
        .iter()
        .chain(spam.iter())
        .map(|o| f.event_evidence(o))
        .collect();
    if let Some(m) = filter_now {
        evidence.push(f.mailbox_evidence(&format!(
            "allowed_domains [{}] leaves out {domain}",
            m.allowed_domains.join(", ")
        )));
    }
    if spam_now.is_some() {
        evidence.push(f.mailbox_evidence("spam routing on"));
    }
    let blocked = !filtered.is_empty() || filter_now.is_some();
    let severity = if !filtered.is_empty() {
        f.failure_severity(Channel::Email, &filtered).0
    } else {
        Severity::Warning
    };
    let note = if filtered.is_empty() {
        String::new()
    } else {
        f.failure_severity(Channel::Email, &filtered).1
    };
    let explanation = match newest(&filtered) {
        Some(o) => match o.problem {
            Problem::EmailFiltered { dropped: true } => l.pick(
                format!("{} に {masked} へ送ったメールは、メールサーバーに受け付けられた後、送信元ドメイン「{domain}」が受信リスト（指定受信）にないため、通知なしに破棄されました（{}）。auやソフトバンクのキャリアメールはこのように黙って破棄します。{note}", f.when(o.ev.at), super::facts::protocol_codes(o.ev)),
                format!("The email sent to {masked} was accepted at {} and then dropped without a word, because the domain {domain} is not on the receive list (指定受信) ({}). au and SoftBank carrier mail do this silently.{note}", f.when(o.ev.at), super::facts::protocol_codes(o.ev)),
            ),
            _ => l.pick(
                format!("{} に {masked} へ送ったメールは、送信元ドメイン「{domain}」が受信リスト（指定受信）にないため拒否されました（{}）。{note}", f.when(o.ev.at), super::facts::protocol_codes(o.ev)),
                format!("The email sent to {masked} at {} was refused because the domain {domain} is not on the mailbox's receive list (指定受信) ({}).{note}", f.when(o.ev.at), super::facts::protocol_codes(o.ev)),
            ),
        },
        None => match (filter_now, newest(&spam)) {
            (Some(m), _) => l.pick(
                format!("メールボックス {masked} は指定したドメイン（{}）からのメールしか受信しない設定で、「{domain}」が含まれていません。", m.allowed_domains.join("、")),
                format!("The mailbox {masked} only accepts mail from {}, which leaves out {domain}.", m.allowed_domains.join(", ")),
            ),
            (None, Some(o)) => l.pick(
                format!("{} に送ったメールは届いていますが、迷惑メールフォルダーに振り分けられました。", f.when(o.ev.at)),
                format!("The email sent at {} did arrive, but in the spam folder.", f.when(o.ev.at)),
            ),
            (None, None) => l.pick(
                format!("メールボックス {masked} は受信したメールを迷惑メールフォルダーに振り分ける設定です。"),
                format!("The mailbox {masked} sends incoming mail to the spam folder."),
            ),
        },
    };
    let carrier_mail = f.email.as_deref().and_then(|e| f.case.carriers.by_mail_domain(e));
    let allow = match carrier_mail {
        Some(c) => {
            let name = c.setting(SettingKind::MailDomainFilter).name(l.code()).to_string();
            let steps = c.remediation(SettingKind::MailDomainFilter, l.code(), f.case.profile, &domain);
            l.pick(
                format!("{}の{}：{steps}", f.carrier_name(c), quote_ja(&name)),
                format!("{} {name}: {steps}", f.carrier_name(c)),
            )
        }
        None => l.pick(
            format!("メールの受信設定（指定受信・受信リスト）で「{domain}」を受信するドメインに追加し、迷惑メールフォルダーも確認してください。"),
            format!("In the mail settings, add {domain} to the domains you receive from (指定受信, the receive list), and check the spam folder too."),
        ),
    };
    let remediation = if blocked {
        l.pick(
            format!("{allow}ワンタイムパスワードは {from} から送られます。設定後、新しいコードを発行してください。"),
            format!("{allow} The codes come from {from}. Then request a new code."),
        )
    } else {
        l.pick(
            format!("迷惑メールフォルダーで {from} からのメールを確認し、迷惑メールではないと設定してください。次回から受信ボックスに届くよう、「{domain}」を受信するドメイン（指定受信）に追加してください。"),
            format!("Check the spam folder for the email from {from} and mark it as not spam. To get the next code in the inbox, add {domain} to the allowed senders (指定受信)."),
        )
    };
    finding(
        "email_domain_filter",
        severity,
        if blocked {
            l.pick(
                "メールのドメイン指定受信（受信リスト）でメールが届きません",
                "The mail domain filter (指定受信) blocks our email",
            )
        } else {
            l.pick(
                "メールが迷惑メールフォルダーに届いています",
                "The email went to the spam folder",
            )
        },
        explanation,
        remediation,
        evidence,
    )
}

pub(crate) fn email_delayed(f: &Facts) -> Option<Finding> {
    let observed = f.observed(|p| matches!(p, Problem::EmailDeferred { .. }));
    let newest_obs = *newest(&observed)?;
    let l = f.lang;
    let evidence: Vec<EvidenceRef> = observed.iter().map(|o| f.event_evidence(o)).collect();
    let gave_up = observed
        .iter()
        .any(|o| matches!(o.problem, Problem::EmailDeferred { done: true }) && arrived_at(o.msg).is_none());
    let severity = if gave_up {
        f.failure_severity(Channel::Email, &observed).0
    } else {
        Severity::Warning
    };
    let reason = reason_words(l, newest_obs.ev.reason.as_deref().unwrap_or("temporary_failure"));
    let codes = super::facts::protocol_codes(newest_obs.ev);
    let after = match arrived_at(newest_obs.msg) {
        Some(t) => l.pick(
            format!("メールは {} に届きました。", f.when(t)),
            format!(" It arrived at {}.", f.when(t)),
        ),
        None if retried_at(&newest_obs).is_some() => {
            let t = f.when(retried_at(&newest_obs).unwrap_or_default());
            l.pick(format!("{t} に再送しました。"), format!(" We tried again at {t}."))
        }
        None if gave_up => l.pick(
            "コードの有効期限が近づいたため、再送を打ち切りました。",
            " We stopped retrying because the code would have expired.",
        ),
        None => match newest_obs.ev.next_attempt_at {
            Some(t) => l.pick(
                format!("{} に再送します。", f.when(t)),
                format!(" We try again at {}.", f.when(t)),
            ),
            None => l.pick("再送を続けています。", " We keep retrying."),
        },
    };
    finding(
        "email_delayed",
        severity,
        l.pick("メールの配信が遅れています", "The email is delayed"),
        l.pick(
            format!("{} に送ったメールは、受信側のメールサーバーから「後で再送するように」と返されました（{reason}、{codes}）。{after}", f.when(newest_obs.ev.at)),
            format!("At {} the receiving mail server asked us to try again later ({reason}, {codes}).{after}", f.when(newest_obs.ev.at)),
        ),
        l.pick(
            format!("数分待ってから受信ボックスをもう一度ご確認ください。届くまでにコードの有効期限（{}）が過ぎた場合は、新しいコードを発行してください。", validity_words(f)),
            format!("Wait a few minutes and check the inbox again. If the code is older than {} when it arrives, request a new one.", validity_words(f)),
        ),
        evidence,
    )
}

/// When the message was tried again after a deferral, if it was.
fn retried_at(o: &Observation) -> Option<Millis> {
    o.msg
        .events
        .get(o.index + 1..)?
        .iter()
        .map(|e| e.at)
        .find(|at| *at > o.ev.at)
}

/// Throttling, an unreachable gateway or relay, system failures: our side.
pub(crate) fn gateway_error(f: &Facts) -> Option<Finding> {
    let mut observed = f.observed(|p| matches!(p, Problem::Gateway { .. }));
    // A send turned away for now whose retry got through (the SMSC or the
    // relay took it) is not a problem the member meets.
    observed.retain(|o| {
        matches!(o.problem, Problem::Gateway { done: true })
            || !o.msg.events[o.index + 1..]
                .iter()
                .any(|e| matches!(e.kind.as_str(), "submitted" | "smtp_accepted"))
    });
    let o = *newest(&observed)?;
    let l = f.lang;
    let evidence: Vec<EvidenceRef> = observed.iter().map(|o| f.event_evidence(o)).collect();
    let done: Vec<Observation> = observed
        .iter()
        .filter(|o| matches!(o.problem, Problem::Gateway { done: true }))
        .copied()
        .collect();
    let severity = if done.is_empty() {
        Severity::Warning
    } else {
        f.failure_severity(o.msg.channel, &done).0
    };
    let note = if done.is_empty() {
        String::new()
    } else {
        f.failure_severity(o.msg.channel, &done).1
    };
    let retry = match (o.problem, o.ev.next_attempt_at) {
        (Problem::Gateway { done: false }, Some(t)) => l.pick(
            format!("{} に再送します。", f.when(t)),
            format!(" We try again at {}.", f.when(t)),
        ),
        _ => String::new(),
    };
    let note = note + &retry;
    let reason = reason_words(l, o.ev.reason.as_deref().unwrap_or("smsc_refused"));
    let codes = super::facts::protocol_codes(o.ev);
    let codes_ja = if codes.is_empty() {
        String::new()
    } else {
        format!("、{codes}")
    };
    let codes_en = if codes.is_empty() {
        String::new()
    } else {
        format!(", {codes}")
    };
    let what = match o.msg.channel {
        Channel::Sms => l.pick("SMS", "SMS"),
        Channel::Email => l.pick("メール", "email"),
    };
    finding(
        "gateway_error",
        severity,
        l.pick(
            "当社側またはネットワークの問題でコードを送れませんでした",
            "A problem on our side stopped the code",
        ),
        l.pick(
            format!("{} に送った{what}は、当社側またはネットワークの問題で届けられませんでした（{reason}{codes_ja}）。会員さまの設定の問題ではありません。{note}", f.when(o.ev.at)),
            format!("The {what} sent at {} could not be delivered because of a problem on our side or in the network ({reason}{codes_en}). It is not caused by the member's phone or settings.{note}", f.when(o.ev.at)),
        ),
        l.pick(
            "1分ほど待ってから、新しいコードを発行してください。繰り返し起きる場合は、上の時刻を添えて運用チームに報告してください。",
            "Wait a minute and request a new code. If it keeps happening, report it to the operations team with the time above.",
        ),
        evidence,
    )
}

/// Delivered, and nothing else wrong: where to look.
pub(crate) fn delivered_ok(f: &Facts) -> Option<Finding> {
    // The newest code's message decides; without OTP messages, the newest message.
    let with_otp: Vec<_> = f.messages.iter().filter(|m| m.otp_id.is_some()).collect();
    let latest = if with_otp.is_empty() {
        f.messages.last()?
    } else {
        *with_otp.last()?
    };
    let at = arrived_at(latest)?;
    let l = f.lang;
    let evidence: Vec<EvidenceRef> = f
        .messages
        .iter()
        .rev()
        .filter_map(|m| {
            arrived_at(m).map(|t| EvidenceRef {
                kind: "message",
                id: m.id.clone(),
                at: Some(t),
                detail: format!("{} delivered at {}", m.channel.as_str(), clock::rfc3339(t)),
            })
        })
        .take(3)
        .collect();
    let validity = validity_words(f);
    let (explanation, remediation) = match latest.channel {
        Channel::Sms => {
            let from = if latest.from.is_empty() {
                f.shown_sender()
            } else {
                latest.from.clone()
            };
            (
                l.pick(
                    format!("最新のコードは {} に携帯電話に届いています。送信元は「{from}」と表示されています。", f.when(at)),
                    format!("The newest code reached the phone at {}, shown as from {from}.", f.when(at)),
                ),
                l.pick(
                    format!("SMSの受信ボックスで「{from}」から {} に届いたメッセージをご確認ください。コードは発行から{validity}以内に入力してください。", f.when(at)),
                    format!("Look in the SMS inbox for the message from {from} received at {}, and enter the code within {validity} of the request.", f.when(at)),
                ),
            )
        }
        Channel::Email => {
            let from = f.case.email_from;
            let masked = member::mask_email(&latest.to);
            (
                l.pick(
                    format!("最新のコードは {} に {masked} の受信ボックスに届いています（送信元 {from}）。", f.when(at)),
                    format!("The newest code reached the inbox of {masked} at {}, sent from {from}.", f.when(at)),
                ),
                l.pick(
                    format!("受信ボックスで {from} から {} に届いたメールをご確認ください。コードは発行から{validity}以内に入力してください。", f.when(at)),
                    format!("Look in the inbox for the email from {from} received at {}, and enter the code within {validity} of the request.", f.when(at)),
                ),
            )
        }
    };
    finding(
        "delivered_ok",
        Severity::Info,
        l.pick("コードは届いています", "The code was delivered"),
        explanation,
        remediation,
        evidence,
    )
}

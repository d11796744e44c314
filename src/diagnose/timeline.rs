//! The merged timeline: OTPs issued, superseded and expired, every code
//! entered (with its answer), refused sends, and every delivery-log event,
//! oldest first, failures flagged, each summed up in the report's language
//! with its SMPP or SMTP codes.

use super::facts::{protocol_codes, reason_words, Facts, Lang};
use super::TimelineEntry;
use crate::delivery::log::{Event, Message, State};
use crate::member::{self, Channel};
use crate::otp::{Otp, OtpStatus};

pub(crate) fn build(f: &Facts) -> Vec<TimelineEntry> {
    let l = f.lang;
    let mut out = Vec::new();
    // After the OTP loop, so that a replacement shows after the new code's issue.
    let mut superseded = Vec::new();
    let mut otps: Vec<&Otp> = f.case.otps.iter().collect();
    otps.sort_by_key(|o| o.issued_at);
    for otp in otps {
        let to = masked(otp.channel, &otp.destination);
        let channel = channel_words(l, otp.channel);
        out.push(entry(
            otp.issued_at,
            "otp_issued",
            &otp.id,
            l.pick(
                format!(
                    "「{}」用のコードを{channel}（{to}）で発行、有効期限 {}",
                    otp.purpose,
                    f.when(otp.expires_at)
                ),
                format!(
                    "Code issued for `{}` by {channel} to {to}, valid until {}",
                    otp.purpose,
                    f.when(otp.expires_at)
                ),
            ),
            false,
        ));
        if otp.status == OtpStatus::Superseded {
            if let Some(newer) = otp.superseded_by.as_deref().and_then(|id| f.otp(id)) {
                superseded.push(entry(
                    newer.issued_at,
                    "otp_superseded",
                    &otp.id,
                    l.pick(
                        format!(
                            "新しいコード（{}）の発行により、このコードは使えなくなりました",
                            newer.id
                        ),
                        format!("Replaced by a newer code ({}); this one no longer works", newer.id),
                    ),
                    false,
                ));
            }
        }
        let mut wrong = 0;
        for e in &otp.entries {
            if e.result == "invalid_code" || e.result == "superseded" {
                wrong += 1;
            }
            let summary = match (e.result.as_str(), &e.matched_otp) {
                ("verified", _) => l.pick("コード入力：正しいコード、認証成功", "Code entered: right, verified"),
                ("invalid_code", _) => l.pick(
                    format!("コード入力：誤ったコード（{wrong}/{}回目）", otp.max_attempts),
                    format!("Code entered: wrong code (attempt {wrong} of {})", otp.max_attempts),
                ),
                ("superseded", Some(old)) => l.pick(
                    format!(
                        "コード入力：以前のコード（{old}）と一致、superseded と回答（{wrong}/{}回目）",
                        otp.max_attempts
                    ),
                    format!(
                        "Code entered: matched an older code ({old}), answered superseded (attempt {wrong} of {})",
                        otp.max_attempts
                    ),
                ),
                ("superseded", None) => l.pick(
                    "コード入力：新しいコードで置き換え済みのコードに入力、superseded と回答",
                    "Code entered on a replaced code: answered superseded",
                ),
                ("expired", _) => l.pick(
                    "コード入力：有効期限切れ、expired と回答",
                    "Code entered after expiry: answered expired",
                ),
                ("already_used", _) => l.pick(
                    "コード入力：使用済みのコード、already_used と回答",
                    "Code entered again after use: answered already_used",
                ),
                ("locked", _) => l.pick(
                    "コード入力：ロック済みのコード、locked と回答",
                    "Code entered on a locked code: answered locked",
                ),
                (other, _) => l.pick(format!("コード入力：{other}"), format!("Code entered: {other}")),
            };
            out.push(entry(e.at, "code_entered", &otp.id, summary, e.result != "verified"));
        }
        if otp.status == OtpStatus::Pending && otp.expires_at <= f.case.now {
            out.push(entry(
                otp.expires_at,
                "otp_expired",
                &otp.id,
                l.pick("コードの有効期限が切れました（未使用）", "The code expired unused"),
                false,
            ));
        }
    }
    out.append(&mut superseded);
    for r in f.case.refusals {
        let channel = if r.destination.contains('@') {
            Channel::Email
        } else {
            Channel::Sms
        };
        out.push(entry(
            r.at,
            "send_refused",
            &masked(channel, &r.destination),
            l.pick(
                format!(
                    "「{}」用のコード送信を送信制限でお断り（{} 秒後から再送可）",
                    r.purpose, r.retry_after
                ),
                format!(
                    "Send for `{}` refused by the send limits (retry after {} s)",
                    r.purpose, r.retry_after
                ),
            ),
            true,
        ));
    }
    for msg in &f.messages {
        for ev in &msg.events {
            out.push(entry(
                ev.at,
                &ev.kind,
                &msg.id,
                event_summary(f, msg, ev),
                is_failure(ev),
            ));
        }
    }
    // Stable: events of one message at one time keep their order.
    out.sort_by_key(|e| e.at);
    out
}

fn entry(at: i64, kind: &str, subject: &str, summary: String, failure: bool) -> TimelineEntry {
    TimelineEntry {
        at,
        kind: kind.to_string(),
        subject: subject.to_string(),
        summary,
        failure,
    }
}

fn masked(channel: Channel, destination: &str) -> String {
    match channel {
        Channel::Sms => member::mask_number(destination),
        Channel::Email => member::mask_email(destination),
    }
}

fn channel_words(lang: Lang, channel: Channel) -> String {
    match channel {
        Channel::Sms => lang.pick("SMS", "SMS"),
        Channel::Email => lang.pick("メール", "email"),
    }
}

/// When the next try is, in an event's summary.
fn retry_ja(next: &Option<String>) -> String {
    next.as_deref().map(|t| format!("、{t} に再送")).unwrap_or_default()
}

fn retry_en(next: &Option<String>) -> String {
    next.as_deref().map(|t| format!("; retry at {t}")).unwrap_or_default()
}

fn is_failure(ev: &Event) -> bool {
    let kind_fails = matches!(
        ev.kind.as_str(),
        "submit_refused"
            | "submit_failed"
            | "send_failed"
            | "retry_scheduled"
            | "failed"
            | "rejected"
            | "expired"
            | "incomplete"
            | "smtp_rejected"
            | "refused"
            | "smtp_deferred"
            | "deferred"
            | "dropped"
            | "smtp_unreachable"
    );
    let spam = ev.kind == "delivered" && ev.reason.as_deref() == Some("spam_folder");
    let bad_receipt = ev.kind == "receipt"
        && ev
            .stat
            .as_deref()
            .is_some_and(|s| !matches!(s, "DELIVRD" | "ENROUTE" | "ACCEPTD"));
    let bad_state = matches!(ev.state, Some(State::Failed | State::Rejected | State::Expired));
    kind_fails || spam || bad_receipt || bad_state
}

/// The id the SMSC gave the message, as the QA team's ESME saw it and the
/// desk's search takes it; empty without one.
fn smsc_id_words(l: Lang, ev: &Event) -> String {
    match &ev.smsc_message_id {
        Some(id) => l.pick(format!("、メッセージID {id}"), format!(", message id {id}")),
        None => String::new(),
    }
}

fn event_summary(f: &Facts, msg: &Message, ev: &Event) -> String {
    let l = f.lang;
    let codes = protocol_codes(ev);
    let paren = |ja: bool| match (codes.is_empty(), ja) {
        (true, _) => String::new(),
        (false, true) => format!("（{codes}）"),
        (false, false) => format!(" ({codes})"),
    };
    let reason = ev.reason.as_deref().map(|r| reason_words(l, r)).unwrap_or_default();
    let next = ev.next_attempt_at.map(|t| f.when(t));
    let to = masked(msg.channel, &msg.to);
    match ev.kind.as_str() {
        "queued" => l.pick(
            format!("{}（{to}）への送信を受付", channel_words(l, msg.channel)),
            format!("Queued: {} to {to}", channel_words(l, msg.channel)),
        ),
        "smsc_accepted" => {
            let carrier = msg
                .carrier
                .as_deref()
                .and_then(|c| f.case.carriers.get(c))
                .map(|c| f.carrier_name(c));
            l.pick(
                format!(
                    "SMSCが受付{}{}",
                    carrier.as_deref().map(|c| format!("（{c}）")).unwrap_or_default(),
                    smsc_id_words(l, ev)
                ),
                format!(
                    "Accepted by the SMSC{}{}",
                    carrier.as_deref().map(|c| format!(" for {c}")).unwrap_or_default(),
                    smsc_id_words(l, ev)
                ),
            )
        }
        "submitted" => l.pick(
            format!("SMSCへ送信{}{}", paren(true), smsc_id_words(l, ev)),
            format!("Submitted to the SMSC{}{}", paren(false), smsc_id_words(l, ev)),
        ),
        "submit_refused" => l.pick(
            format!("SMSCが送信を拒否：{reason}{}{}", paren(true), retry_ja(&next)),
            format!(
                "The SMSC refused the submission: {reason}{}{}",
                paren(false),
                retry_en(&next)
            ),
        ),
        "submit_failed" | "send_failed" => l.pick(
            format!("送信できませんでした：{reason}{}", retry_ja(&next)),
            format!("Could not be sent: {reason}{}", retry_en(&next)),
        ),
        "retry_scheduled" => {
            let n = ev.attempt.map(|a| a.to_string()).unwrap_or_default();
            l.pick(
                format!(
                    "{n}回目の配信失敗：{reason}{}{}",
                    paren(true),
                    next.as_deref().map(|t| format!("、次回 {t}")).unwrap_or_default()
                ),
                format!(
                    "Delivery attempt {n} failed: {reason}{}{}",
                    paren(false),
                    next.as_deref()
                        .map(|t| format!("; next attempt at {t}"))
                        .unwrap_or_default()
                ),
            )
        }
        "delivered" if ev.reason.as_deref() == Some("spam_folder") => l.pick(
            format!("迷惑メールフォルダーに配信{}", paren(true)),
            format!("Delivered to the spam folder{}", paren(false)),
        ),
        "delivered" => match msg.channel {
            Channel::Sms => l.pick(
                format!("携帯電話に配信（送信元表示「{}」）{}", msg.from, paren(true)),
                format!("Delivered to the phone, shown from {}{}", msg.from, paren(false)),
            ),
            Channel::Email => l.pick(
                format!("受信ボックスに配信{}", paren(true)),
                format!("Delivered to the inbox{}", paren(false)),
            ),
        },
        "failed" | "rejected" => l.pick(
            format!("配信できませんでした：{reason}{}", paren(true)),
            format!("Not delivered: {reason}{}", paren(false)),
        ),
        "expired" => l.pick(
            format!("有効期間が終わり、配信を打ち切り{}", paren(true)),
            format!("Expired: the network gave up when the validity ended{}", paren(false)),
        ),
        "incomplete" => l.pick(
            format!("長いメッセージの一部が届かず、配信を打ち切り{}", paren(true)),
            format!("Not delivered: parts of the long message never came{}", paren(false)),
        ),
        "replaced" => l.pick(
            "配信前に送信元がメッセージを差し替え（replace_sm）".to_string(),
            "Replaced by its sender before delivery (replace_sm)".to_string(),
        ),
        "receipt" => l.pick(
            format!("配信レシート{}", paren(true)),
            format!("Delivery receipt{}", paren(false)),
        ),
        "smtp_accepted" => l.pick(
            format!("メールサーバーが受付{}", paren(true)),
            format!("Accepted by the mail server{}", paren(false)),
        ),
        "smtp_rejected" | "refused" => l.pick(
            format!("メールサーバーが拒否：{reason}{}", paren(true)),
            format!("Refused by the mail server: {reason}{}", paren(false)),
        ),
        "smtp_deferred" | "deferred" => l.pick(
            format!("メールサーバーが一時拒否：{reason}{}{}", paren(true), retry_ja(&next)),
            format!(
                "Deferred by the mail server: {reason}{}{}",
                paren(false),
                retry_en(&next)
            ),
        ),
        "dropped" => l.pick(
            format!("受付後、ドメイン指定受信により破棄{}", paren(true)),
            format!("Accepted, then dropped silently by the domain filter{}", paren(false)),
        ),
        "smtp_unreachable" => l.pick(
            format!(
                "メールサーバーに接続できません{}",
                next.as_deref().map(|t| format!("、{t} に再送")).unwrap_or_default()
            ),
            format!(
                "The mail relay could not be reached{}",
                next.as_deref().map(|t| format!("; retry at {t}")).unwrap_or_default()
            ),
        ),
        other => {
            let words = if reason.is_empty() {
                String::new()
            } else {
                format!(": {reason}")
            };
            format!("{other}{words}{}", paren(l == Lang::Ja))
        }
    }
}

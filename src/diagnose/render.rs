//! The terminal rendering of a report for `otpgate diagnose`: the summary,
//! the registration, the findings (most likely first, each with what to do
//! and its evidence), then the timeline, wrapped to 80 columns. Japanese
//! characters count two columns, as terminals show them.

use std::fmt::Write as _;

use super::facts::Lang;
use super::Report;
use crate::clock;

const WIDTH: usize = 80;

/// The report as plain text, at most 80 columns wide (a word longer than a
/// line, like a long id, stands on a line of its own).
pub fn render_text(report: &Report) -> String {
    let l = Lang::of(&report.lang);
    let mut out = String::new();
    let who = match &report.member_id {
        Some(id) => l.pick(format!("会員 {id}"), format!("member {id}")),
        None => l.pick("会員なし（宛先で検索）", "no member (looked up by destination)"),
    };
    let heading = l.pick(
        format!("otpgate 診断：{who}（{}）", clock::rfc3339(report.generated_at)),
        format!("otpgate diagnosis: {who} at {}", clock::rfc3339(report.generated_at)),
    );
    push_wrapped(&mut out, &heading, 0, 2);
    push_wrapped(
        &mut out,
        &format!("{}{}", l.pick("概要：", "Summary: "), report.summary),
        0,
        2,
    );

    out.push('\n');
    out.push_str(&l.pick("登録内容\n", "Registration\n"));
    let r = &report.registration;
    let dash = || "-".to_string();
    let phone = match (&r.phone, r.phone_verified) {
        (Some(p), Some(true)) => l.pick(format!("{p}（認証済み）"), format!("{p} (verified)")),
        (Some(p), Some(false)) => l.pick(format!("{p}（未認証）"), format!("{p} (not verified)")),
        (Some(p), None) => p.clone(),
        (None, _) => dash(),
    };
    let lines = [
        (
            l.pick("通知先", "destination"),
            r.destination.clone().unwrap_or_else(dash),
        ),
        (
            l.pick("言語・居住地", "locale, residence"),
            format!(
                "{} / {}",
                r.locale.clone().unwrap_or_else(dash),
                r.residence.clone().unwrap_or_else(dash)
            ),
        ),
        (l.pick("携帯電話", "phone"), phone),
        (
            l.pick("携帯電話会社", "carrier"),
            r.carrier.clone().unwrap_or_else(dash),
        ),
        (
            l.pick("SMSの送信元表示", "SMS shows as from"),
            r.sms_sender.clone().unwrap_or_else(dash),
        ),
        (l.pick("メール", "email"), r.email.clone().unwrap_or_else(dash)),
        (l.pick("メールの送信元", "email comes from"), r.email_sender.clone()),
    ];
    for (label, value) in lines {
        push_wrapped(&mut out, &format!("{label}: {value}"), 2, 4);
    }

    out.push('\n');
    out.push_str(&l.pick("所見（可能性の高い順）\n", "Findings (most likely first)\n"));
    if report.findings.is_empty() {
        push_wrapped(&mut out, &l.pick("なし", "none"), 2, 2);
    }
    for (i, f) in report.findings.iter().enumerate() {
        let n = i + 1;
        push_wrapped(
            &mut out,
            &format!("{n}. [{}] {} ({})", f.severity.as_str().to_uppercase(), f.title, f.code),
            2,
            5,
        );
        push_wrapped(&mut out, &f.explanation, 5, 5);
        push_wrapped(
            &mut out,
            &format!("{}{}", l.pick("対応：", "What to do: "), f.remediation),
            5,
            5,
        );
        if !f.evidence.is_empty() {
            push_wrapped(&mut out, &l.pick("根拠：", "Evidence:"), 5, 5);
            for e in &f.evidence {
                push_wrapped(&mut out, &format!("- {} {}: {}", e.kind, e.id, e.detail), 7, 9);
            }
        }
    }

    out.push('\n');
    out.push_str(&l.pick("経過（! は失敗）\n", "Timeline (! marks a failure)\n"));
    if report.timeline.is_empty() {
        push_wrapped(&mut out, &l.pick("なし", "none"), 2, 2);
    }
    for t in &report.timeline {
        let flag = if t.failure { '!' } else { ' ' };
        push_wrapped(
            &mut out,
            &format!("{} {flag} {} {}", short_time(t.at), t.kind, t.subject),
            2,
            6,
        );
        push_wrapped(&mut out, &t.summary, 6, 6);
    }
    out
}

/// `2026-01-01 00:00:05` in Japan time.
fn short_time(at: i64) -> String {
    let full = clock::rfc3339(at);
    // 2026-01-01T00:00:05[.123]+09:00
    full.get(..19).map(|s| s.replacen('T', " ", 1)).unwrap_or(full)
}

/// Columns a character takes in a terminal: two for East Asian wide ones.
fn char_width(c: char) -> usize {
    let wide = matches!(c as u32,
        0x1100..=0x115F
        | 0x2E80..=0x303E
        | 0x3041..=0x33FF
        | 0x3400..=0x4DBF
        | 0x4E00..=0x9FFF
        | 0xA000..=0xA4CF
        | 0xAC00..=0xD7A3
        | 0xF900..=0xFAFF
        | 0xFE30..=0xFE4F
        | 0xFF00..=0xFF60
        | 0xFFE0..=0xFFE6);
    if wide {
        2
    } else {
        1
    }
}

fn text_width(s: &str) -> usize {
    s.chars().map(char_width).sum()
}

/// Characters a line must not start with, and ones it must not end with
/// (the Japanese line-breaking rule, kinsoku).
const NO_LINE_START: &str = "。、，．）」』】〉》！？：；・ー";
const NO_LINE_END: &str = "（「『【〈《";

/// A word cut where Japanese text may break: each wide character on its
/// own, runs of narrow characters kept whole.
fn atoms(word: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut run = String::new();
    for c in word.chars() {
        if char_width(c) == 2 {
            if !run.is_empty() {
                out.push(std::mem::take(&mut run));
            }
            out.push(c.to_string());
        } else {
            run.push(c);
        }
    }
    if !run.is_empty() {
        out.push(run);
    }
    out
}

/// Appends `text` wrapped to [`WIDTH`]: the first line indented by
/// `first`, the rest by `rest`. Breaks at spaces, and between the wide
/// characters of Japanese text (which has no spaces), never putting a
/// closing mark first on a line or an opening one last.
fn push_wrapped(out: &mut String, text: &str, first: usize, rest: usize) {
    let mut indent = first;
    // Each atom with whether a space goes before it.
    let mut line: Vec<(bool, String)> = Vec::new();
    let mut width = 0;
    let emit = |out: &mut String, indent: usize, line: &[(bool, String)]| {
        let mut s = " ".repeat(indent);
        for (i, (space, atom)) in line.iter().enumerate() {
            if *space && i > 0 {
                s.push(' ');
            }
            s.push_str(atom);
        }
        let _ = writeln!(out, "{}", s.trim_end());
    };
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        for (i, atom) in atoms(word).into_iter().enumerate() {
            let space = i == 0 && !line.is_empty();
            let atom_width = text_width(&atom);
            if indent + width + usize::from(space) + atom_width > WIDTH && !line.is_empty() {
                let starts_badly = atom.chars().next().is_some_and(|c| NO_LINE_START.contains(c));
                let ends_badly = line
                    .last()
                    .and_then(|(_, a)| a.chars().last())
                    .is_some_and(|c| NO_LINE_END.contains(c));
                let carry = if i > 0 && line.len() > 1 && (starts_badly || ends_badly) {
                    line.pop()
                } else {
                    None
                };
                emit(out, indent, &line);
                indent = rest;
                line.clear();
                width = 0;
                if let Some((_, carried)) = carry {
                    width += text_width(&carried);
                    line.push((false, carried));
                }
                width += atom_width;
                line.push((false, atom));
                continue;
            }
            width += usize::from(space) + atom_width;
            line.push((space, atom));
        }
    }
    if !line.is_empty() || text.trim().is_empty() {
        emit(out, indent, &line);
    }
}

#[cfg(test)]
pub(super) fn max_line_width(text: &str) -> usize {
    text.lines().map(text_width).max().unwrap_or(0)
}

//! Scenario files: a carrier world (handsets, mailboxes, members), a seed,
//! then steps that drive OTP flows and assert outcomes. The format is
//! documented in `fixtures/scenarios/README.md`.
//!
//! Parsing is pure and refuses a bad file with its line and the reason;
//! `runner` plays a scenario against a server over HTTP; `junit` writes
//! the report CI systems read.

pub mod junit;
pub mod runner;

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

/// One scenario file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The simulation seed of the server it runs on (in-process runs).
    #[serde(default = "default_seed")]
    pub seed: u64,
    #[serde(default)]
    pub handsets: Vec<BTreeMap<String, Value>>,
    #[serde(default)]
    pub mailboxes: Vec<BTreeMap<String, Value>>,
    #[serde(default)]
    pub members: Vec<MemberSetup>,
    #[serde(default)]
    pub steps: Vec<Step>,
}

fn default_seed() -> u64 {
    7
}

/// A member, registered through the real flows: an SMS phone goes through
/// the four steps (register, read the code on the handset, confirm, set SMS).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberSetup {
    pub id: String,
    #[serde(default)]
    pub locale: Option<String>,
    #[serde(default)]
    pub residence: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub phone: Option<String>,
    /// `sms` or `email`; SMS needs `phone`.
    #[serde(default)]
    pub notification: Option<String>,
}

/// One step; each is a table with exactly one key naming what it does.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    /// Issue an OTP: `issue = { member = "M1", purpose = "login", as = "otp1", expect = "rate_limited" }`.
    Issue(Issue),
    /// A new code for an earlier OTP: `resend = { otp = "otp1", as = "otp2" }`.
    Resend(Resend),
    /// Move the virtual clock: `advance = 600`.
    Advance(u64),
    /// Change a handset: `set_handset = { number = "090-...", powered_on = false }`.
    SetHandset(BTreeMap<String, Value>),
    /// Change a mailbox: `set_mailbox = { address = "...", full = true }`.
    SetMailbox(BTreeMap<String, Value>),
    /// Switch chaos: `set_chaos = { enabled = true, carriers = { docomo = { throttle = 1.0 } } }`.
    SetChaos(BTreeMap<String, Value>),
    /// Register a (new) phone number: `register_phone = { member = "M1", number = "...", expect = "fixed_line_number" }`.
    RegisterPhone(RegisterPhone),
    /// `set_notification = { member = "M1", channel = "sms", expect = "phone_not_verified" }`.
    SetNotification(SetNotification),
    /// Wait (advancing the clock) for a new code on a handset or in a mailbox:
    /// `read_code = { handset = "090-...", as = "c1", from = "22471", within = 60 }`.
    ReadCode(ReadCode),
    /// `verify = { otp = "otp1", code = "c1", expect = "verified" }`; `code` is a name
    /// from `read_code`, `"wrong"` (a code that is not the right one) or six digits.
    Verify(Verify),
    /// `expect_message = { otp = "otp1", state = "delivered", within = 30, reason = "storage_full" }`.
    ExpectMessage(ExpectMessage),
    /// `expect_finding = { member = "M1", code = "blocked_by_sms_filter", top = true, lang = "en", text = "22471" }`.
    ExpectFinding(ExpectFinding),
    /// `expect_no_code = { handset = "090-...", within = 60 }`: nothing new arrives.
    ExpectNoCode(ReadCode),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Issue {
    pub member: String,
    #[serde(default = "default_purpose")]
    pub purpose: String,
    #[serde(default, rename = "as")]
    pub name: Option<String>,
    #[serde(default)]
    pub expect: Option<String>,
}

fn default_purpose() -> String {
    "login".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resend {
    pub otp: String,
    #[serde(default, rename = "as")]
    pub name: Option<String>,
    #[serde(default)]
    pub expect: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterPhone {
    pub member: String,
    pub number: String,
    #[serde(default)]
    pub expect: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetNotification {
    pub member: String,
    pub channel: String,
    #[serde(default)]
    pub expect: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadCode {
    #[serde(default)]
    pub handset: Option<String>,
    #[serde(default)]
    pub mailbox: Option<String>,
    #[serde(default, rename = "as")]
    pub name: Option<String>,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default = "default_within")]
    pub within: u64,
}

fn default_within() -> u64 {
    60
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verify {
    #[serde(default = "default_otp_name")]
    pub otp: String,
    pub code: String,
    #[serde(default = "default_verified")]
    pub expect: String,
}

fn default_otp_name() -> String {
    "last".into()
}

fn default_verified() -> String {
    "verified".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectMessage {
    #[serde(default = "default_otp_name")]
    pub otp: String,
    pub state: String,
    #[serde(default)]
    pub within: u64,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectFinding {
    pub member: String,
    pub code: String,
    #[serde(default)]
    pub top: bool,
    #[serde(default)]
    pub lang: Option<String>,
    /// Text the finding's explanation or remediation must contain.
    #[serde(default)]
    pub text: Option<String>,
    /// `false` asserts the finding is absent.
    #[serde(default = "default_true")]
    pub present: bool,
}

fn default_true() -> bool {
    true
}

/// Why a scenario file was refused.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {reason}")]
pub struct ScenarioError {
    pub file: String,
    pub reason: String,
}

/// Parses a scenario; errors name the line and the reason.
pub fn parse(file: &str, text: &str) -> Result<Scenario, ScenarioError> {
    let scenario: Scenario = toml::from_str(text).map_err(|e| ScenarioError {
        file: file.into(),
        reason: e.to_string().trim().to_string(),
    })?;
    let bad = |reason: String| ScenarioError {
        file: file.into(),
        reason,
    };
    for m in &scenario.members {
        if m.notification.as_deref() == Some("sms") && m.phone.is_none() {
            return Err(bad(format!("member `{}`: notification = \"sms\" needs a phone", m.id)));
        }
    }
    for h in &scenario.handsets {
        if !h.contains_key("number") {
            return Err(bad("a [[handsets]] entry has no `number`".into()));
        }
    }
    for m in &scenario.mailboxes {
        if !m.contains_key("address") {
            return Err(bad("a [[mailboxes]] entry has no `address`".into()));
        }
    }
    for (i, step) in scenario.steps.iter().enumerate() {
        if let Step::ReadCode(r) | Step::ExpectNoCode(r) = step {
            if r.handset.is_some() == r.mailbox.is_some() {
                return Err(bad(format!(
                    "step {}: give exactly one of `handset` or `mailbox`",
                    i + 1
                )));
            }
        }
    }
    Ok(scenario)
}

pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
    let text = std::fs::read_to_string(path).map_err(|e| ScenarioError {
        file: path.display().to_string(),
        reason: e.to_string(),
    })?;
    parse(&path.display().to_string(), &text)
}

impl Step {
    /// A short label for reports: `issue M1/login`, `advance 600 s`.
    pub fn label(&self) -> String {
        match self {
            Step::Issue(i) => format!("issue {} for {}", i.purpose, i.member),
            Step::Resend(r) => format!("resend {}", r.otp),
            Step::Advance(s) => format!("advance {s} s"),
            Step::SetHandset(h) => format!("set handset {}", h.get("number").and_then(Value::as_str).unwrap_or("?")),
            Step::SetMailbox(m) => format!(
                "set mailbox {}",
                m.get("address").and_then(Value::as_str).unwrap_or("?")
            ),
            Step::SetChaos(c) => format!("set chaos {}", serde_json::to_string(c).unwrap_or_default()),
            Step::RegisterPhone(r) => format!("register {} for {}", r.number, r.member),
            Step::SetNotification(n) => format!("set notification {} for {}", n.channel, n.member),
            Step::ReadCode(r) => format!(
                "read code on {}",
                r.handset.as_deref().or(r.mailbox.as_deref()).unwrap_or("?")
            ),
            Step::Verify(v) => format!("verify {} with {} expecting {}", v.otp, v.code, v.expect),
            Step::ExpectMessage(m) => format!("expect {} message {}", m.otp, m.state),
            Step::ExpectFinding(f) => format!("expect finding {} for {}", f.code, f.member),
            Step::ExpectNoCode(r) => format!(
                "expect no code on {}",
                r.handset.as_deref().or(r.mailbox.as_deref()).unwrap_or("?")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_scenario() {
        let s = parse(
            "x.toml",
            r#"
name = "softbank"
seed = 3
[[handsets]]
number = "080-1111-2222"
carrier = "softbank"
[[members]]
id = "M1"
phone = "080-1111-2222"
notification = "sms"
[[steps]]
issue = { member = "M1" }
[[steps]]
advance = 10
[[steps]]
read_code = { handset = "080-1111-2222", from = "22471" }
[[steps]]
verify = { code = "last" }
"#,
        )
        .unwrap();
        assert_eq!(s.seed, 3);
        assert_eq!(s.steps.len(), 4);
        assert!(matches!(s.steps[1], Step::Advance(10)));
    }

    #[test]
    fn a_bad_file_names_the_line_and_the_reason() {
        let err = parse("bad.toml", "name = \"x\"\n[[steps]]\nteleport = 5\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3") && err.contains("teleport"), "{err}");
        let err = parse("bad.toml", "name = \"x\"\n[[steps]]\nread_code = { within = 5 }\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("exactly one"), "{err}");
    }
}

//! Plays a scenario against a server over its HTTP API, step by step, and
//! records each step's outcome. It only uses the public API, so it runs the
//! same against an in-process server or a running one (`--server URL`).

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Value};

use super::{ExpectFinding, ExpectMessage, MemberSetup, ReadCode, Scenario, Step};
use crate::http::client::{segment, ApiClient};

/// What became of one step.
#[derive(Debug, Clone)]
pub struct StepResult {
    pub label: String,
    pub outcome: Result<String, String>,
    /// Virtual seconds the step covered.
    pub seconds: f64,
}

/// What became of one scenario.
#[derive(Debug, Clone)]
pub struct ScenarioResult {
    pub name: String,
    pub file: String,
    pub steps: Vec<StepResult>,
    /// Set when the setup failed before any step ran.
    pub setup_error: Option<String>,
}

impl ScenarioResult {
    pub fn passed(&self) -> bool {
        self.setup_error.is_none() && self.steps.iter().all(|s| s.outcome.is_ok())
    }
}

struct Runner<'a> {
    api: &'a ApiClient,
    otps: HashMap<String, Value>,
    codes: HashMap<String, String>,
    /// The id of the message that brought the newest code read per handset
    /// (its `message_id`) or mailbox (its `id`): the next read asks for a
    /// code that came after it, exact where the standing clock gives two
    /// arrivals one time.
    seen: HashMap<String, String>,
}

type StepOutcome = Result<String, String>;

fn error_code(body: &Value) -> String {
    body["error"]["code"].as_str().unwrap_or("").to_string()
}

/// Compares an expected answer (`ok`, a status word, or an error code) with what came back.
fn check_expect(expect: Option<&str>, status: u16, body: &Value, success: &str) -> StepOutcome {
    let got = if status < 300 {
        success.to_string()
    } else {
        error_code(body)
    };
    match expect {
        None if status < 300 => Ok(got),
        None => Err(format!("{status} {}", body)),
        Some(want) if want == got || (want == "ok" && status < 300) => Ok(got),
        Some(want) => Err(format!("expected `{want}`, got `{got}` ({status}: {})", compact(body))),
    }
}

fn compact(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 300 {
        format!("{}…", &s[..s.char_indices().nth(300).map_or(s.len(), |(i, _)| i)])
    } else {
        s
    }
}

impl Runner<'_> {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<(u16, Value), String> {
        self.api.call(method, path, body.as_ref()).await
    }

    async fn advance(&self, seconds: u64) -> Result<(), String> {
        let (status, body) = self
            .call("POST", "/v1/sim/clock/advance", Some(json!({ "seconds": seconds })))
            .await?;
        if status != 200 {
            return Err(format!("advancing the clock: {status} {}", compact(&body)));
        }
        Ok(())
    }

    /// A call that must succeed; `what` says which, in the error.
    async fn must(&self, method: &str, path: &str, body: Value, what: &str) -> Result<Value, String> {
        let (status, answer) = self.call(method, path, Some(body)).await?;
        if status >= 300 {
            return Err(format!("{what}: {status} {}", compact(&answer)));
        }
        Ok(answer)
    }

    /// `PUT {collection}/{key}` with the rest of the table as the body.
    async fn put_sim(&self, collection: &str, key_field: &str, table: &BTreeMap<String, Value>) -> StepOutcome {
        let mut body = table.clone();
        let key = body
            .remove(key_field)
            .and_then(|n| n.as_str().map(str::to_string))
            .unwrap_or_default();
        let path = format!("/v1/sim/{collection}/{}", segment(&key));
        self.must("PUT", &path, json!(body), &key)
            .await
            .map(|_| "ok".to_string())
    }

    async fn setup(&mut self, scenario: &Scenario) -> Result<(), String> {
        for h in &scenario.handsets {
            self.put_sim("handsets", "number", h).await?;
        }
        for m in &scenario.mailboxes {
            self.put_sim("mailboxes", "address", m).await?;
        }
        for m in &scenario.members {
            self.member(m).await?;
        }
        Ok(())
    }

    async fn member(&mut self, m: &MemberSetup) -> Result<(), String> {
        let id = segment(&m.id);
        let body = json!({"id": m.id, "locale": m.locale, "residence": m.residence, "email": m.email});
        self.must("POST", "/v1/members", body, &format!("member {}", m.id))
            .await?;
        if let Some(phone) = &m.phone {
            let what = format!("member {}: registering {phone}", m.id);
            self.must(
                "POST",
                &format!("/v1/members/{id}/phone"),
                json!({ "number": phone }),
                &what,
            )
            .await?;
            let (code, _) = self
                .wait_code(&format!("/v1/sim/handsets/{}", segment(phone)), phone, 60)
                .await?
                .ok_or_else(|| format!("member {}: the verification code never reached {phone}", m.id))?;
            let what = format!("member {}: confirming {phone}", m.id);
            self.must(
                "POST",
                &format!("/v1/members/{id}/phone/verify"),
                json!({ "code": code }),
                &what,
            )
            .await?;
            // The verification SMS started the 60 s send cooldown.
            self.advance(61).await?;
        }
        if let Some(channel) = &m.notification {
            let what = format!("member {}: notification {channel}", m.id);
            self.must(
                "PUT",
                &format!("/v1/members/{id}/notification"),
                json!({ "channel": channel }),
                &what,
            )
            .await?;
        }
        Ok(())
    }

    /// Reads `{base}/otp`, advancing 5 s at a time, for a code that came
    /// after the last one read there.
    async fn wait_code(&mut self, base: &str, key: &str, within: u64) -> Result<Option<(String, Value)>, String> {
        let mut waited = 0;
        loop {
            let path = match self.seen.get(key) {
                Some(last) => format!("{base}/otp?after={}", segment(last)),
                None => format!("{base}/otp"),
            };
            let (status, body) = self.call("GET", &path, None).await?;
            if status == 200 {
                let id = body["message_id"].as_str().or(body["id"].as_str()).unwrap_or("");
                self.seen.insert(key.to_string(), id.to_string());
                let code = body["code"].as_str().unwrap_or("").to_string();
                return Ok(Some((code, body)));
            }
            if waited >= within {
                return Ok(None);
            }
            self.advance(5).await?;
            waited += 5;
        }
    }

    fn otp_id(&self, name: &str) -> Result<String, String> {
        self.otps
            .get(name)
            .and_then(|o| o["id"].as_str())
            .map(str::to_string)
            .ok_or_else(|| format!("no OTP named `{name}` yet (name one with `as` on an issue step)"))
    }

    async fn step(&mut self, step: &Step) -> StepOutcome {
        match step {
            Step::Issue(i) => {
                let body = json!({"member_id": i.member, "purpose": i.purpose});
                self.new_otp("/v1/otps".into(), body, i.name.as_deref(), i.expect.as_deref())
                    .await
            }
            Step::Resend(r) => {
                let path = format!("/v1/otps/{}/resend", segment(&self.otp_id(&r.otp)?));
                self.new_otp(path, json!({}), r.name.as_deref(), r.expect.as_deref())
                    .await
            }
            Step::Advance(seconds) => self.advance(*seconds).await.map(|_| format!("+{seconds} s")),
            Step::SetHandset(h) => self.put_sim("handsets", "number", h).await,
            Step::SetMailbox(m) => self.put_sim("mailboxes", "address", m).await,
            Step::SetChaos(c) => {
                let (status, body) = self.call("PUT", "/v1/sim/chaos", Some(json!(c))).await?;
                check_expect(None, status, &body, "ok")
            }
            Step::RegisterPhone(r) => {
                let (status, body) = self
                    .call(
                        "POST",
                        &format!("/v1/members/{}/phone", segment(&r.member)),
                        Some(json!({"number": r.number})),
                    )
                    .await?;
                check_expect(r.expect.as_deref(), status, &body, "accepted")
            }
            Step::SetNotification(n) => {
                let (status, body) = self
                    .call(
                        "PUT",
                        &format!("/v1/members/{}/notification", segment(&n.member)),
                        Some(json!({"channel": n.channel})),
                    )
                    .await?;
                check_expect(n.expect.as_deref(), status, &body, "ok")
            }
            Step::ReadCode(r) => self.read_code(r).await,
            Step::ExpectNoCode(r) => {
                let (base, key) = code_source(r);
                match self.wait_code(&base, &key, r.within).await? {
                    Some((_, body)) => Err(format!("a code arrived from {}", body["from"])),
                    None => Ok(format!("nothing new within {} s", r.within)),
                }
            }
            Step::Verify(v) => {
                let id = self.otp_id(&v.otp)?;
                let code = match v.code.as_str() {
                    "wrong" => {
                        let right = self.codes.get("last").cloned().unwrap_or_else(|| "000000".into());
                        let n: u32 = right.parse().unwrap_or(0);
                        format!("{:06}", (n + 1) % 1_000_000)
                    }
                    c if c.len() == 6 && c.chars().all(|d| d.is_ascii_digit()) => c.to_string(),
                    name => self
                        .codes
                        .get(name)
                        .cloned()
                        .ok_or_else(|| format!("no code named `{name}` yet (read one with read_code)"))?,
                };
                let (status, body) = self
                    .call(
                        "POST",
                        &format!("/v1/otps/{}/verify", segment(&id)),
                        Some(json!({ "code": code })),
                    )
                    .await?;
                check_expect(Some(&v.expect), status, &body, "verified")
            }
            Step::ExpectMessage(m) => self.expect_message(m).await,
            Step::ExpectFinding(f) => self.expect_finding(f).await,
        }
    }

    /// Issues or resends; a new OTP is remembered as `last` and as `name`.
    async fn new_otp(&mut self, path: String, body: Value, name: Option<&str>, expect: Option<&str>) -> StepOutcome {
        let (status, answer) = self.call("POST", &path, Some(body)).await?;
        if status < 300 {
            self.otps.insert("last".into(), answer.clone());
            if let Some(name) = name {
                self.otps.insert(name.to_string(), answer.clone());
            }
        }
        check_expect(expect, status, &answer, "issued").map(|_| {
            let sender = answer["sender"].as_str().unwrap_or("-");
            format!("{} from {sender}", answer["id"].as_str().unwrap_or("refused"))
        })
    }

    async fn read_code(&mut self, r: &ReadCode) -> StepOutcome {
        let (base, key) = code_source(r);
        let (code, body) = self
            .wait_code(&base, &key, r.within)
            .await?
            .ok_or_else(|| format!("no new code reached {key} within {} s", r.within))?;
        if let Some(want) = &r.from {
            let digits = |s: &str| s.chars().filter(char::is_ascii_digit).collect::<String>();
            let got = body["from"].as_str().unwrap_or("");
            if digits(got) != digits(want) && got != want {
                return Err(format!("the code came from `{got}`, expected `{want}`"));
            }
        }
        self.codes.insert("last".into(), code.clone());
        if let Some(name) = &r.name {
            self.codes.insert(name.clone(), code);
        }
        Ok(format!("a code from {}", body["from"].as_str().unwrap_or("?")))
    }

    async fn expect_message(&mut self, m: &ExpectMessage) -> StepOutcome {
        let otp = self.otp_id(&m.otp)?;
        let mut waited = 0;
        loop {
            let (_, body) = self
                .call("GET", &format!("/v1/messages?otp_id={}", segment(&otp)), None)
                .await?;
            let message = &body["items"][0];
            let state = message["state"].as_str().unwrap_or("none");
            let reasons: Vec<&str> = message["events"]
                .as_array()
                .map(|e| e.iter().filter_map(|e| e["reason"].as_str()).collect())
                .unwrap_or_default();
            let reason_ok = m.reason.as_deref().is_none_or(|r| reasons.contains(&r));
            if state == m.state && reason_ok {
                return Ok(format!("{state} {}", reasons.join(",")));
            }
            if waited >= m.within {
                return Err(format!(
                    "message is `{state}` (reasons: {}), expected `{}`{}",
                    reasons.join(", "),
                    m.state,
                    m.reason
                        .as_ref()
                        .map(|r| format!(" with reason `{r}`"))
                        .unwrap_or_default()
                ));
            }
            let step = 5.min(m.within - waited).max(1);
            self.advance(step).await?;
            waited += step;
        }
    }

    async fn expect_finding(&mut self, f: &ExpectFinding) -> StepOutcome {
        let lang = f.lang.as_deref().map(|l| format!("?lang={l}")).unwrap_or_default();
        let (status, body) = self
            .call(
                "GET",
                &format!("/v1/diagnostics/members/{}{lang}", segment(&f.member)),
                None,
            )
            .await?;
        if status != 200 {
            return Err(format!("diagnostics: {status} {}", compact(&body)));
        }
        let findings = body["findings"].as_array().cloned().unwrap_or_default();
        let codes: Vec<&str> = findings.iter().filter_map(|x| x["code"].as_str()).collect();
        let found = findings.iter().position(|x| x["code"] == f.code.as_str());
        match (found, f.present) {
            (None, false) => Ok(format!("absent (findings: {})", codes.join(", "))),
            (Some(_), false) => Err(format!("`{}` is present (findings: {})", f.code, codes.join(", "))),
            (None, true) => Err(format!("no `{}` (findings: {})", f.code, codes.join(", "))),
            (Some(i), true) => {
                if findings[i]["evidence"].as_array().is_none_or(|e| e.is_empty()) {
                    return Err(format!("`{}` has no evidence: {}", f.code, compact(&findings[i])));
                }
                if f.top && i != 0 {
                    return Err(format!(
                        "`{}` is finding {} of {}, not the top (findings: {})",
                        f.code,
                        i + 1,
                        codes.len(),
                        codes.join(", ")
                    ));
                }
                if let Some(text) = &f.text {
                    let x = &findings[i];
                    let all = format!("{} {} {}", x["title"], x["explanation"], x["remediation"]);
                    if !all.contains(text.as_str()) {
                        return Err(format!("`{}` does not mention `{text}`: {}", f.code, compact(x)));
                    }
                }
                Ok(format!("found at rank {} ({})", i + 1, codes.join(", ")))
            }
        }
    }
}

fn code_source(r: &ReadCode) -> (String, String) {
    match (&r.handset, &r.mailbox) {
        (Some(h), _) => (format!("/v1/sim/handsets/{}", segment(h)), h.clone()),
        (None, Some(m)) => (format!("/v1/sim/mailboxes/{}", segment(m)), m.clone()),
        (None, None) => (String::new(), String::new()),
    }
}

/// Plays one scenario; stops at the first failed step (the later ones are not run).
pub async fn run(api: &ApiClient, file: &str, scenario: &Scenario) -> ScenarioResult {
    let mut runner = Runner {
        api,
        otps: HashMap::new(),
        codes: HashMap::new(),
        seen: HashMap::new(),
    };
    let mut result = ScenarioResult {
        name: scenario.name.clone(),
        file: file.to_string(),
        steps: Vec::new(),
        setup_error: None,
    };
    if let Err(e) = runner.setup(scenario).await {
        result.setup_error = Some(e);
        return result;
    }
    for step in &scenario.steps {
        let outcome = runner.step(step).await;
        let failed = outcome.is_err();
        result.steps.push(StepResult {
            label: step.label(),
            outcome,
            seconds: 0.0,
        });
        if failed {
            break;
        }
    }
    result
}

/// The lines `otpgate run` prints for a scenario.
pub fn render(result: &ScenarioResult) -> String {
    let mut out = format!("{} ({})\n", result.name, result.file);
    if let Some(e) = &result.setup_error {
        out.push_str(&format!("  FAIL setup: {e}\n"));
    }
    for (i, s) in result.steps.iter().enumerate() {
        match &s.outcome {
            Ok(detail) => out.push_str(&format!("  ok   {:>2}. {} — {detail}\n", i + 1, s.label)),
            Err(why) => out.push_str(&format!("  FAIL {:>2}. {} — {why}\n", i + 1, s.label)),
        }
    }
    out.push_str(if result.passed() { "  passed\n" } else { "  FAILED\n" });
    out
}

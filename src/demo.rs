//! `otpgate demo`: a short story across carriers, played through the
//! public API of a server started on the embedded defaults with a virtual
//! clock, so a newcomer sees the whole product in one command. What it
//! prints is shown in the README.

use serde_json::{json, Value};

use crate::http::client::{segment, ApiClient};

/// One line of the story, or the reason it could not go on.
type Told = Result<Vec<String>, String>;

async fn call(api: &ApiClient, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
    let (status, answer) = api.call(method, path, body.as_ref()).await?;
    if status >= 300 {
        return Err(format!("{method} {path}: {status} {answer}"));
    }
    Ok(answer)
}

async fn advance(api: &ApiClient, seconds: u64) -> Result<(), String> {
    call(
        api,
        "POST",
        "/v1/sim/clock/advance",
        Some(json!({ "seconds": seconds })),
    )
    .await
    .map(|_| ())
}

/// Waits (advancing the clock 5 s at a time, at most a minute) for a code on a handset.
async fn code_on(api: &ApiClient, number: &str) -> Result<Option<Value>, String> {
    for _ in 0..12 {
        let (status, body) = api
            .call("GET", &format!("/v1/sim/handsets/{}/otp", segment(number)), None)
            .await?;
        if status == 200 {
            return Ok(Some(body));
        }
        advance(api, 5).await?;
    }
    Ok(None)
}

async fn sms_member(api: &ApiClient, id: &str, number: &str, carrier: &str) -> Result<(), String> {
    call(
        api,
        "PUT",
        &format!("/v1/sim/handsets/{}", segment(number)),
        Some(json!({ "carrier": carrier })),
    )
    .await?;
    let email = format!("{}@example.jp", id.to_lowercase());
    call(
        api,
        "POST",
        "/v1/members",
        Some(json!({"id": id, "locale": "ja", "residence": "JP", "email": email})),
    )
    .await?;
    call(
        api,
        "POST",
        &format!("/v1/members/{id}/phone"),
        Some(json!({ "number": number })),
    )
    .await?;
    let code = code_on(api, number)
        .await?
        .ok_or("the verification code did not arrive")?;
    call(
        api,
        "POST",
        &format!("/v1/members/{id}/phone/verify"),
        Some(json!({"code": code["code"]})),
    )
    .await?;
    call(
        api,
        "PUT",
        &format!("/v1/members/{id}/notification"),
        Some(json!({"channel": "sms"})),
    )
    .await?;
    // Clear the inbox's newest code for the story's own OTP by passing the send cooldown.
    advance(api, 61).await
}

async fn top_finding(api: &ApiClient, id: &str, lang: &str) -> Result<Value, String> {
    let report = call(api, "GET", &format!("/v1/diagnostics/members/{id}?lang={lang}"), None).await?;
    Ok(report["findings"][0].clone())
}

async fn docomo(api: &ApiClient) -> Told {
    sms_member(api, "DEMO-DOCOMO", "090-1000-0001", "docomo").await?;
    let otp = call(
        api,
        "POST",
        "/v1/otps",
        Some(json!({"member_id": "DEMO-DOCOMO", "purpose": "profile"})),
    )
    .await?;
    let got = code_on_new(api, "090-1000-0001", &otp).await?;
    let ok = call(
        api,
        "POST",
        &format!("/v1/otps/{}/verify", otp["id"].as_str().unwrap_or("")),
        Some(json!({"code": got["code"]})),
    )
    .await?;
    Ok(vec![
        "1. A docomo member asks for a code to view their profile.".into(),
        format!(
            "   The phone shows an SMS from {}; the member types the code: {}.",
            got["from"].as_str().unwrap_or("?"),
            ok["status"].as_str().unwrap_or("?")
        ),
    ])
}

/// The newest code, waiting until it is newer than the OTP's issue time.
async fn code_on_new(api: &ApiClient, number: &str, otp: &Value) -> Result<Value, String> {
    let issued = otp["issued_at"].as_str().unwrap_or("").to_string();
    for _ in 0..12 {
        advance(api, 5).await?;
        let (status, body) = api
            .call("GET", &format!("/v1/sim/handsets/{}/otp", segment(number)), None)
            .await?;
        if status == 200 && body["received_at"].as_str().unwrap_or("") > issued.as_str() {
            return Ok(body);
        }
    }
    Err(format!("no new code reached {number}"))
}

async fn softbank(api: &ApiClient) -> Told {
    sms_member(api, "DEMO-SOFTBANK", "080-1000-0002", "softbank").await?;
    let otp = call(
        api,
        "POST",
        "/v1/otps",
        Some(json!({"member_id": "DEMO-SOFTBANK", "purpose": "miles"})),
    )
    .await?;
    let got = code_on_new(api, "080-1000-0002", &otp).await?;
    let finding = top_finding(api, "DEMO-SOFTBANK", "en").await?;
    Ok(vec![
        "2. A SoftBank member looks for an SMS from 03-5460-0124 and finds none.".into(),
        format!(
            "   The code came from {}: {}",
            got["from"].as_str().unwrap_or("?"),
            finding["title"].as_str().unwrap_or("")
        ),
    ])
}

async fn au(api: &ApiClient) -> Told {
    sms_member(api, "DEMO-AU", "090-1000-0003", "au").await?;
    call(
        api,
        "PUT",
        "/v1/sim/handsets/090-1000-0003",
        Some(json!({"filters": {"reject_other_domestic": true}})),
    )
    .await?;
    let otp = call(
        api,
        "POST",
        "/v1/otps",
        Some(json!({"member_id": "DEMO-AU", "purpose": "login"})),
    )
    .await?;
    advance(api, 30).await?;
    let messages = call(
        api,
        "GET",
        &format!("/v1/messages?otp_id={}", otp["id"].as_str().unwrap_or("")),
        None,
    )
    .await?;
    let state = messages["items"][0]["state"].as_str().unwrap_or("?").to_string();
    let finding = top_finding(api, "DEMO-AU", "en").await?;
    let finding_ja = top_finding(api, "DEMO-AU", "ja").await?;
    Ok(vec![
        "3. An au member's phone rejects SMS from other domestic operators.".into(),
        format!("   The SMSC's receipt says REJECTD; the message is {state}. The desk's top finding:"),
        format!("   {}", finding["title"].as_str().unwrap_or("")),
        format!("   → {}", finding["remediation"].as_str().unwrap_or("")),
        format!("   → {}", finding_ja["remediation"].as_str().unwrap_or("")),
    ])
}

async fn email(api: &ApiClient) -> Told {
    call(
        api,
        "PUT",
        "/v1/sim/mailboxes/demo-typo%40docomo.ne.jp",
        Some(json!({"exists": false})),
    )
    .await?;
    call(
        api,
        "POST",
        "/v1/members",
        Some(json!({"id": "DEMO-EMAIL", "locale": "en", "residence": "US", "email": "demo-typo@docomo.ne.jp"})),
    )
    .await?;
    call(
        api,
        "POST",
        "/v1/otps",
        Some(json!({"member_id": "DEMO-EMAIL", "purpose": "login"})),
    )
    .await?;
    advance(api, 5).await?;
    let finding = top_finding(api, "DEMO-EMAIL", "en").await?;
    Ok(vec![
        "4. A member abroad gets codes by email, but the address was mistyped.".into(),
        format!(
            "   The mail server answered 550 at RCPT: {}",
            finding["title"].as_str().unwrap_or("")
        ),
        format!("   → {}", finding["remediation"].as_str().unwrap_or("")),
    ])
}

/// Plays the story; returns the lines to print.
pub async fn play(api: &ApiClient, base_url: &str) -> Told {
    let mut lines = vec![
        "otpgate demo: four members, four carriers, one virtual clock.".to_string(),
        String::new(),
    ];
    for chapter in [
        docomo(api).await?,
        softbank(api).await?,
        au(api).await?,
        email(api).await?,
    ] {
        lines.extend(chapter);
        lines.push(String::new());
    }
    lines.push(format!("Open the support console: {base_url}/"));
    lines.push(format!("  the au member:     {base_url}/console/members/DEMO-AU"));
    lines.push(format!("  the email member:  {base_url}/console/members/DEMO-EMAIL"));
    lines.push(format!("  the delivery log:  {base_url}/v1/messages"));
    Ok(lines)
}

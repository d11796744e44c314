//! `otpgate watch`: the delivery log live on the command line, one line per
//! event as `/v1/events` sends it, for whoever follows a member's next try
//! or their own application's traffic from a terminal (`--json` for one
//! JSON object per line, to pipe into jq).

use serde_json::Value;

/// One event as a line: when, the channel and destination, who sent it,
/// the state, what happened, and the message's id.
///
/// `2026-11-29 03:04:47  SMS → +819055550002  qa-app  delivered  shown on the handset from 03-5460-0124  m000000000006`
pub fn line(data: &Value) -> String {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let event = &data["event"];
    let at = text(&event["at"])
        .replace('T', " ")
        .chars()
        .take(19)
        .collect::<String>();
    let channel = match data["channel"].as_str() {
        Some("sms") => "SMS",
        Some("email") => "Email",
        _ => "?",
    };
    let what = match event["detail"].as_str() {
        Some(detail) if !detail.is_empty() => detail.to_string(),
        _ => text(&event["kind"]),
    };
    let mut line = format!(
        "{at}  {channel} → {}  {}  {}  {what}",
        text(&data["to"]),
        text(&data["origin"]),
        text(&data["state"]),
    );
    if let Some(member) = data["member_id"].as_str() {
        line.push_str(&format!("  member {member}"));
    }
    line.push_str(&format!("  {}", text(&data["id"])));
    line
}

/// The query of `/v1/events` for the filters given.
pub fn query(filters: &[(&str, Option<&str>)]) -> String {
    let pairs: Vec<String> = filters
        .iter()
        .filter_map(|(key, value)| value.map(|v| format!("{key}={}", crate::http::client::segment(v))))
        .collect();
    if pairs.is_empty() {
        String::new()
    } else {
        format!("?{}", pairs.join("&"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_event_reads_as_one_line() {
        let data = json!({
            "id": "m000000000006", "channel": "sms", "to": "+819055550002", "origin": "qa-app",
            "state": "delivered", "member_id": null,
            "event": {"kind": "delivered", "at": "2026-11-29T03:04:47.183+09:00",
                      "detail": "shown on the handset from 03-5460-0124"}
        });
        assert_eq!(
            line(&data),
            "2026-11-29 03:04:47  SMS → +819055550002  qa-app  delivered  shown on the handset from 03-5460-0124  m000000000006"
        );
        let data = json!({
            "id": "m1", "channel": "email", "to": "taro@docomo.ne.jp", "origin": "otpgate",
            "state": "queued", "member_id": "M1", "event": {"kind": "queued", "at": "2026-11-29T03:04:47+09:00"}
        });
        assert_eq!(
            line(&data),
            "2026-11-29 03:04:47  Email → taro@docomo.ne.jp  otpgate  queued  queued  member M1  m1"
        );
    }

    #[test]
    fn filters_make_the_query() {
        assert_eq!(query(&[("origin", None)]), "");
        assert_eq!(
            query(&[("origin", Some("qa-app")), ("to", Some("+81 90")), ("channel", None)]),
            "?origin=qa-app&to=%2B81%2090"
        );
    }
}

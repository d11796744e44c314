//! The simulated handsets over HTTP, as the SMPP and carrier tests set and
//! read them: `PUT /v1/sim/handsets/{n}` and its inbox.

#![allow(dead_code)]

use serde_json::Value;

use super::{enc, Api};

/// One SMS as the handset's inbox shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown {
    pub from: String,
    pub text: String,
    pub received_at: String,
}

impl Api {
    /// Creates or changes a handset; `state` is a merge patch of its fields.
    pub async fn handset(&self, number: &str, state: Value) -> Value {
        let (status, body) = self.put(&format!("/v1/sim/handsets/{}", enc(number)), state).await;
        assert!(status == 200 || status == 201, "handset {number}: {status} {body}");
        body
    }

    /// The inbox oldest first.
    pub async fn inbox(&self, number: &str) -> Vec<Shown> {
        let (status, body) = self.get(&format!("/v1/sim/handsets/{}/messages", enc(number))).await;
        assert_eq!(status, 200, "inbox {number}: {body}");
        let mut items: Vec<Shown> = body["items"]
            .as_array()
            .unwrap_or_else(|| panic!("items in {body}"))
            .iter()
            .map(|m| Shown {
                from: m["from"].as_str().unwrap_or("").to_string(),
                text: m["text"].as_str().unwrap_or("").to_string(),
                received_at: m["received_at"].as_str().unwrap_or("").to_string(),
            })
            .collect();
        // The API lists newest first.
        items.reverse();
        items
    }
}

/// `2026-01-01T02:00:00+09:00` → `2601010200`, the receipt date format.
pub fn receipt_date(rfc3339: &str) -> String {
    let digits: String = rfc3339.chars().filter(char::is_ascii_digit).collect();
    digits.get(2..12).unwrap_or("").to_string()
}

/// `base` with the fields of `extra` set over it (one level deep).
pub fn merged(mut base: Value, extra: &Value) -> Value {
    if let (Some(fields), Some(extra)) = (base.as_object_mut(), extra.as_object()) {
        for (key, value) in extra {
            fields.insert(key.clone(), value.clone());
        }
    }
    base
}

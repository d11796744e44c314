//! The OpenAPI 3 document of the HTTP API, served at `/v1/openapi.json`.
//! It is generated from `ROUTES`; a test requests every route in it and
//! checks the router knows it.

use serde_json::{json, Map, Value};

/// One route: method, path (with `{params}`), tag, summary, request body fields.
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub tag: &'static str,
    pub summary: &'static str,
    pub body: &'static [&'static str],
}

const fn r(
    method: &'static str,
    path: &'static str,
    tag: &'static str,
    summary: &'static str,
    body: &'static [&'static str],
) -> Route {
    Route {
        method,
        path,
        tag,
        summary,
        body,
    }
}

pub const ROUTES: &[Route] = &[
    r("get", "/healthz", "ops", "Liveness", &[]),
    r("get", "/metrics", "ops", "Prometheus text metrics", &[]),
    r("get", "/v1/openapi.json", "ops", "This document", &[]),
    r(
        "post",
        "/v1/members",
        "members",
        "Create a member",
        &["id", "locale", "residence", "email"],
    ),
    r(
        "get",
        "/v1/members",
        "members",
        "List members, or find them by ?phone= or ?email=",
        &[],
    ),
    r("get", "/v1/members/{id}", "members", "Read a member", &[]),
    r(
        "put",
        "/v1/members/{id}/email",
        "members",
        "Set the email address",
        &["email"],
    ),
    r(
        "post",
        "/v1/members/{id}/phone",
        "members",
        "Register a mobile number; a verification code is sent by SMS",
        &["number"],
    ),
    r(
        "post",
        "/v1/members/{id}/phone/verify",
        "members",
        "Confirm the number with the code",
        &["code"],
    ),
    r(
        "put",
        "/v1/members/{id}/notification",
        "members",
        "Set the notification destination: sms or email",
        &["channel"],
    ),
    r(
        "post",
        "/v1/otps",
        "otps",
        "Issue and send an OTP (never answers the code)",
        &["member_id", "purpose"],
    ),
    r("get", "/v1/otps/{id}", "otps", "An OTP's state, without the code", &[]),
    r("post", "/v1/otps/{id}/verify", "otps", "Verify a code", &["code"]),
    r(
        "post",
        "/v1/otps/{id}/resend",
        "otps",
        "A new code that supersedes this one, within the send limits",
        &[],
    ),
    r(
        "get",
        "/v1/messages",
        "delivery",
        "The delivery log (?member_id=&to=&otp_id=&before=&limit=)",
        &[],
    ),
    r(
        "get",
        "/v1/messages/{id}",
        "delivery",
        "One message with its event timeline",
        &[],
    ),
    r(
        "get",
        "/v1/messages/{id}/wait",
        "delivery",
        "Long poll until the message reaches ?state= (default final) or ?timeout= seconds pass",
        &[],
    ),
    r(
        "get",
        "/v1/diagnostics/members/{id}",
        "diagnostics",
        "The troubleshooting report (?lang=ja|en)",
        &[],
    ),
    r(
        "get",
        "/v1/diagnostics/destinations/{destination}",
        "diagnostics",
        "The report for a phone number or email address, with or without a member",
        &[],
    ),
    r("get", "/v1/carriers", "simulation", "The loaded carrier models", &[]),
    r("get", "/v1/sim/clock", "simulation", "The (virtual) clock", &[]),
    r(
        "post",
        "/v1/sim/clock/advance",
        "simulation",
        "Advance the virtual clock; answers after everything due on the way happened",
        &["seconds"],
    ),
    r("get", "/v1/sim/chaos", "simulation", "Chaos settings", &[]),
    r(
        "put",
        "/v1/sim/chaos",
        "simulation",
        "Switch chaos on or off, with per-carrier rates",
        &["enabled", "carriers"],
    ),
    r("get", "/v1/sim/handsets", "simulation", "Every simulated handset", &[]),
    r(
        "put",
        "/v1/sim/handsets/{number}",
        "simulation",
        "Create or change a simulated handset",
        &[
            "carrier",
            "powered_on",
            "in_coverage",
            "abroad",
            "roaming",
            "storage_full",
            "sms_plan",
            "call_restriction",
            "filters",
        ],
    ),
    r(
        "get",
        "/v1/sim/handsets/{number}",
        "simulation",
        "A handset's carrier and state",
        &[],
    ),
    r(
        "get",
        "/v1/sim/handsets/{number}/messages",
        "simulation",
        "The inbox as the phone shows it",
        &[],
    ),
    r(
        "get",
        "/v1/sim/handsets/{number}/otp",
        "simulation",
        "The newest code that reached the phone",
        &[],
    ),
    r(
        "put",
        "/v1/sim/mailboxes/{address}",
        "simulation",
        "Create or change a simulated mailbox",
        &["exists", "full", "greylist", "spam", "allowed_domains"],
    ),
    r(
        "get",
        "/v1/sim/mailboxes/{address}",
        "simulation",
        "A mailbox's state",
        &[],
    ),
    r(
        "get",
        "/v1/sim/mailboxes/{address}/messages",
        "simulation",
        "The mailbox's messages",
        &[],
    ),
    r(
        "get",
        "/v1/sim/mailboxes/{address}/otp",
        "simulation",
        "The newest code that reached the mailbox",
        &[],
    ),
    r(
        "get",
        "/v1/mail",
        "mail",
        "Every captured email, newest first (?q=&before=&limit=)",
        &[],
    ),
    r("delete", "/v1/mail", "mail", "Delete every captured email", &[]),
    r(
        "get",
        "/v1/mail/{id}",
        "mail",
        "One email with headers, text, HTML and raw source",
        &[],
    ),
    r(
        "get",
        "/v1/mail/{id}/raw",
        "mail",
        "The raw source (message/rfc822)",
        &[],
    ),
    r("delete", "/v1/mail/{id}", "mail", "Delete one email", &[]),
];

fn error_schema() -> Value {
    json!({"type": "object", "properties": {"error": {"type": "object", "properties": {"code": {"type": "string"}, "message": {"type": "string"}}, "required": ["code", "message"]}}})
}

pub fn document() -> Value {
    let mut paths = Map::new();
    for route in ROUTES {
        let params: Vec<Value> = route
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let mut op = json!({
            "tags": [route.tag],
            "summary": route.summary,
            "operationId": format!("{}_{}", route.method, route.path.replace(['/', '{', '}', '.'], "_").trim_matches('_')),
            "parameters": params,
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}},
                "default": {"description": "An error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            }
        });
        if !route.body.is_empty() {
            let props: Map<String, Value> = route.body.iter().map(|f| (f.to_string(), json!({}))).collect();
            op["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": {"type": "object", "properties": props}}}});
        }
        let entry = paths.entry(route.path.to_string()).or_insert_with(|| json!({}));
        entry[route.method] = op;
    }
    json!({
        "openapi": "3.0.3",
        "info": {"title": "otpgate", "version": env!("CARGO_PKG_VERSION"), "description": "OTP service with a simulated Japanese SMS and email network and a troubleshooting desk. Errors answer {\"error\": {\"code\", \"message\"}}; lists answer {\"items\": [...]}."},
        "paths": paths,
        "components": {"schemas": {"Error": error_schema()}}
    })
}

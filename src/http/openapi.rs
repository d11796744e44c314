//! The OpenAPI 3 document of the HTTP API, served at `/v1/openapi.json`.
//! It is generated from `ROUTES`; a test requests every route in it and
//! checks the router knows it. Which routes can be refused for overload
//! (503) or over the request rate (429) comes from [`RequestClass`], the
//! same decision the server makes.

use hyper::Method;
use serde_json::{json, Map, Value};

use super::RequestClass;
use crate::delivery::log::State;
use crate::member::Channel;

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
    r(
        "get",
        "/healthz",
        "ops",
        "Liveness: 200 `ok`, or `low_on_space` while writes are refused for want of disk space; 503 `failed` once the store failed (restart after freeing space)",
        &[],
    ),
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
        "The delivery log, newest first (?member_id=&to=&otp_id=&smsc_message_id=&state=&channel=&since=&until=&before=&limit=); a filter that matches few answers a short page with a next cursor after reading 5,000 messages",
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
        "The report for a phone number, an email address or a message id (the SMSC's, the SMTP server's `queued as`, the delivery log's), with or without a member (409 for an id naming several destinations)",
        &[],
    ),
    r(
        "get",
        "/v1/smsc",
        "simulation",
        "The SMSC now: each account (its binds, whether one can receive, receipts waiting for a receiving bind) and each bind (account, kind, peer, TLS, since when, submits taken, deliver_sm answered)",
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
    r(
        "get",
        "/v1/sim/handsets",
        "simulation",
        "Every handset set up with PUT (a number nobody set up is on the default handset)",
        &[],
    ),
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
        "A handset's carrier and state; for a number messages were sent to without one set up, the default handset",
        &[],
    ),
    r(
        "get",
        "/v1/sim/handsets/{number}/messages",
        "simulation",
        "The inbox as the phone shows it, newest first; ?after= (RFC 3339) only what arrived later, ?wait= seconds (at most 120) to wait for one",
        &[],
    ),
    r(
        "delete",
        "/v1/sim/handsets/{number}/messages",
        "simulation",
        "Empties the inbox, as the phone's owner deleting every message; answers {\"deleted\": n}",
        &[],
    ),
    r(
        "post",
        "/v1/sim/handsets/{number}/send",
        "simulation",
        "The phone sends an SMS to an ESME ({\"to\", \"text\", \"system_id\"}): a deliver_sm to a receiving bind, kept until one binds",
        &[],
    ),
    r(
        "get",
        "/v1/sim/handsets/{number}/otp",
        "simulation",
        "The newest code that reached the phone; ?after= (RFC 3339) only one that arrived later, ?wait= seconds (at most 120) to wait for one; 404 if none",
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
        "The mailbox's messages, newest first; ?after= (RFC 3339) only what arrived later, ?wait= seconds (at most 120) to wait for one",
        &[],
    ),
    r(
        "delete",
        "/v1/sim/mailboxes/{address}/messages",
        "simulation",
        "Empties the mailbox, as its owner deleting every message (the capture under /v1/mail keeps them); answers {\"deleted\": n}",
        &[],
    ),
    r(
        "get",
        "/v1/sim/mailboxes/{address}/otp",
        "simulation",
        "The newest code that reached the mailbox's inbox; ?after= (RFC 3339) only one that arrived later, ?wait= seconds (at most 120) to wait for one; 404 if none",
        &[],
    ),
    r(
        "get",
        "/v1/mail",
        "mail",
        "Every captured email, newest first (?q=&since=&until=&before=&limit=)",
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
    r(
        "get",
        "/v1/mail/{id}/parts/{index}",
        "mail",
        "One attachment or inline image of an email, as a download (`parts` of the email lists them)",
        &[],
    ),
    r("delete", "/v1/mail/{id}", "mail", "Delete one email", &[]),
    r(
        "get",
        "/v1/events",
        "delivery",
        "The delivery log live: each event as it becomes durable, as server-sent events (`event: delivery`, the message as it is now and the event; `event: lagged` when a slow reader missed some). At most 64 streams at once",
        &[],
    ),
];

/// The routes that answer a stream rather than a document.
const STREAMS: &[&str] = &["/v1/events"];

/// One query parameter: its name, its schema, what it does.
type QueryParam = (&'static str, fn() -> Value, &'static str);

fn string() -> Value {
    json!({"type": "string"})
}

/// An RFC 3339 time, such as `2026-11-28T10:15:00+09:00`.
fn date_time() -> Value {
    json!({"type": "string", "format": "date-time"})
}

fn number() -> Value {
    json!({"type": "number", "minimum": 0})
}

fn integer() -> Value {
    json!({"type": "integer", "minimum": 1})
}

fn state() -> Value {
    json!({"type": "string", "enum": State::ALL.map(State::as_str)})
}

fn wait_state() -> Value {
    let states = State::ALL.map(State::as_str);
    json!({"type": "string", "enum": std::iter::once("final").chain(states).collect::<Vec<_>>()})
}

fn channel() -> Value {
    json!({"type": "string", "enum": Channel::ALL.map(Channel::as_str)})
}

fn lang() -> Value {
    json!({"type": "string", "enum": ["ja", "en"]})
}

fn format() -> Value {
    json!({"type": "string", "enum": ["json", "text"]})
}

const ARRIVAL: &[QueryParam] = &[
    (
        "after",
        string,
        "Only what arrived later: an RFC 3339 time, or the id of the last message read (an SMS's message_id, a mail's id)",
    ),
    (
        "wait",
        number,
        "Seconds (at most 120) to wait for something to show when nothing does yet: a long poll",
    ),
];

const DIAGNOSIS: &[QueryParam] = &[
    ("lang", lang, "The report's language; the member's own by default"),
    ("format", format, "`text` for the report as the CLI prints it"),
];

/// The query parameters of the routes that take any, by method and path.
const QUERIES: &[(&str, &str, &[QueryParam])] = &[
    (
        "get",
        "/v1/members",
        &[
            ("phone", string, "Members registered with this number, in any spelling"),
            ("email", string, "Members registered with this address"),
        ],
    ),
    (
        "get",
        "/v1/messages",
        &[
            ("member_id", string, "Messages for this member"),
            ("to", string, "Messages to this number (any spelling) or address"),
            ("otp_id", string, "The messages of this OTP"),
            (
                "smsc_message_id",
                string,
                "The messages the SMSC gave this id (a long message's by any part's)",
            ),
            ("state", state, "Messages in this state now"),
            ("channel", channel, "Messages on this channel"),
            ("since", date_time, "Messages created at or after this time"),
            ("until", date_time, "Messages created before this time"),
            ("before", string, "The `next` of the previous page"),
            ("limit", integer, "Messages on a page (default 100, at most 1,000)"),
        ],
    ),
    (
        "get",
        "/v1/messages/{id}/wait",
        &[
            (
                "state",
                wait_state,
                "The state to wait for; `final` (the default) is any final state",
            ),
            ("timeout", number, "Seconds to wait (default 30, at most 120)"),
        ],
    ),
    (
        "get",
        "/v1/events",
        &[
            ("channel", channel, "Events of this channel's messages"),
            ("to", string, "Events of messages to this number (any spelling) or address"),
            ("member_id", string, "Events of this member's messages"),
            (
                "origin",
                string,
                "Events of messages sent by this: an ESME's system_id, `smtp`, `handset`, or `otpgate` for the OTP core",
            ),
        ],
    ),
    ("get", "/v1/diagnostics/members/{id}", DIAGNOSIS),
    ("get", "/v1/diagnostics/destinations/{destination}", DIAGNOSIS),
    ("get", "/v1/sim/handsets/{number}/messages", ARRIVAL),
    ("get", "/v1/sim/handsets/{number}/otp", ARRIVAL),
    ("get", "/v1/sim/mailboxes/{address}/messages", ARRIVAL),
    ("get", "/v1/sim/mailboxes/{address}/otp", ARRIVAL),
    (
        "get",
        "/v1/mail",
        &[
            (
                "q",
                string,
                "Mail holding every word of this in its sender, recipients, subject or text (any case); `from:`, `to:` and `subject:` look in one place, `has:attachment` keeps mail with files, quotes keep words together",
            ),
            ("since", date_time, "Mail received at or after this time"),
            ("until", date_time, "Mail received before this time"),
            ("before", string, "The `next` of the previous page"),
            ("limit", integer, "Mail on a page (default 50, at most 500)"),
        ],
    ),
];

fn error_schema() -> Value {
    json!({"type": "object", "properties": {"error": {"type": "object", "properties": {"code": {"type": "string"}, "message": {"type": "string"}}, "required": ["code", "message"]}}})
}

/// The shared answers of admission control, referenced from each route.
fn admission_responses() -> Value {
    let retry_after =
        json!({"Retry-After": {"description": "Seconds to wait before trying again", "schema": {"type": "integer"}}});
    let error = json!({"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}});
    json!({
        "Overloaded": {
            "description": "`overloaded`: refused at once because the server is at `[http] max_connections` (the connection is then closed) or, except for /healthz, /metrics and the long poll, at `max_in_flight`; nothing was done. Retry after `Retry-After` seconds. `storage_failed` (no Retry-After): the store could not write (a full disk): nothing more is taken until the server is restarted, and /healthz answers 503 too.",
            "headers": retry_after,
            "content": error,
        },
        "InsufficientStorage": {
            "description": "`insufficient_storage`: the data directory's disk has less free than `min_free_mib`, so nothing that writes is taken (reads go on); nothing was done. Passes by itself once there is room: retry after `Retry-After` seconds.",
            "headers": retry_after,
            "content": error,
        },
        "RateLimited": {
            "description": "`rate_limited`: over `[http] max_requests_per_sec`, or, where codes are sent, the destination's send limits; nothing was done. Retry after `Retry-After` seconds.",
            "headers": retry_after,
            "content": error,
        },
    })
}

pub fn document() -> Value {
    let mut paths = Map::new();
    for route in ROUTES {
        let params: Vec<Value> = route
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .chain(
                QUERIES
                    .iter()
                    .filter(|(method, path, _)| *method == route.method && *path == route.path)
                    .flat_map(|(_, _, params)| params.iter())
                    .map(|(name, schema, what)| {
                        json!({"name": name, "in": "query", "required": false, "schema": schema(), "description": what})
                    }),
            )
            .collect();
        let content = if STREAMS.contains(&route.path) {
            json!({"text/event-stream": {"schema": {"type": "string"}}})
        } else {
            json!({"application/json": {"schema": {"type": "object"}}})
        };
        let mut op = json!({
            "tags": [route.tag],
            "summary": route.summary,
            "operationId": format!("{}_{}", route.method, route.path.replace(['/', '{', '}', '.'], "_").trim_matches('_')),
            "parameters": params,
            "responses": {
                "200": {"description": "OK", "content": content},
                "default": {"description": "An error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            }
        });
        let method = Method::from_bytes(route.method.to_ascii_uppercase().as_bytes()).unwrap_or(Method::GET);
        let segments: Vec<&str> = route.path.split('/').filter(|s| !s.is_empty()).collect();
        let class = RequestClass::of(&method, &segments, false);
        // Every route can meet the connection cap; the exempt ones never
        // meet the in-flight cap or the rate limit.
        op["responses"]["503"] = json!({"$ref": "#/components/responses/Overloaded"});
        if class == RequestClass::Metered {
            op["responses"]["429"] = json!({"$ref": "#/components/responses/RateLimited"});
            op["responses"]["507"] = json!({"$ref": "#/components/responses/InsufficientStorage"});
        }
        if !route.body.is_empty() {
            let props: Map<String, Value> = route.body.iter().map(|f| (f.to_string(), json!({}))).collect();
            op["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": {"type": "object", "properties": props}}}});
        }
        let entry = paths.entry(route.path.to_string()).or_insert_with(|| json!({}));
        entry[route.method] = op;
    }
    json!({
        "openapi": "3.0.3",
        "info": {"title": "otpgate", "version": env!("CARGO_PKG_VERSION"), "description": "OTP service with a simulated Japanese SMS and email network and a troubleshooting desk. Errors answer {\"error\": {\"code\", \"message\"}}; lists answer {\"items\": [...]}. Under overload a request is refused at once, never queued: 503 `overloaded` or 429 `rate_limited`, both with Retry-After. /healthz, /metrics, the long polls (/v1/messages/{id}/wait, a read with ?wait=) and the event streams (/v1/events) are exempt from the in-flight cap and the rate limit."},
        "paths": paths,
        "components": {"schemas": {"Error": error_schema()}, "responses": admission_responses()}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_with_query_parameters_is_in_the_route_table() {
        for (method, path, _) in QUERIES {
            assert!(
                ROUTES.iter().any(|r| r.method == *method && r.path == *path),
                "{method} {path} has query parameters but no route"
            );
        }
        let doc = document();
        let names: Vec<&str> = doc["paths"]["/v1/sim/handsets/{number}/otp"]["get"]["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        assert_eq!(names, ["number", "after", "wait"]);
    }

    #[test]
    fn overload_answers_are_documented_where_they_can_happen() {
        let doc = document();
        let responses = |path: &str, method: &str| doc["paths"][path][method]["responses"].clone();
        let issue = responses("/v1/otps", "post");
        assert_eq!(issue["429"]["$ref"], "#/components/responses/RateLimited");
        assert_eq!(issue["503"]["$ref"], "#/components/responses/Overloaded");
        assert_eq!(issue["507"]["$ref"], "#/components/responses/InsufficientStorage");
        let read = responses("/v1/messages", "get");
        assert!(
            read["429"].is_null() && read["507"].is_null() && !read["503"].is_null(),
            "{read}"
        );
        let health = responses("/healthz", "get");
        assert!(health["429"].is_null(), "{health}");
        let overloaded = &doc["components"]["responses"]["Overloaded"];
        assert!(overloaded["headers"]["Retry-After"].is_object(), "{overloaded}");
    }
}

//! The JSON routes of DESIGN.md section 3, and their answer shapes.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::HeaderValue;
use hyper::{Method, Response, StatusCode};
use serde_json::{json, Value};

use super::{json_response, text_response, ApiError, ApiResult, Req};
use crate::clock::{rfc3339, Clock, Window};
use crate::delivery::log::{DeliveryLog, Event, Message, Query, State};
use crate::member::{self, Channel, Member, MemberError};
use crate::otp::{Otp, Verdict};
use crate::service::{NewMember, OtpService, ServiceError};
use crate::sim::sms::SmsNetwork;
use crate::sim::{World, WorldError};

/// What the handlers reach: the services, built by `app`.
pub struct Ctx {
    pub service: OtpService,
    pub log: DeliveryLog,
    pub clock: Arc<Clock>,
    pub world: World,
    pub network: SmsNetwork,
    pub mail: crate::smtp::MailWorld,
    pub desk: crate::desk::Desk,
    /// Required on simulation routes when HTTP listens beyond loopback.
    pub admin_token: Option<String>,
    pub loopback: bool,
    pub metrics: Metrics,
    /// The SMSC's and the SMTP server's answers, for `/metrics`.
    pub smsc_counters: Arc<crate::smsc::SmscCounters>,
    /// The SMSC's accounts and binds; None with SMPP off.
    pub smsc: Option<crate::smsc::binds::SmscView>,
    pub smtp_counters: Arc<crate::smtp::SmtpCounters>,
    /// The OTP core's SMPP client, for `/metrics` to say whether it is bound.
    pub sms_link: Option<crate::delivery::sms::SmsClient>,
    /// For `/metrics` to say whether writes wait for sled.
    pub store: crate::store::Store,
    /// Ends the long polls when the server starts stopping.
    pub shutdown: crate::shutdown::Shutdown,
    /// The streams of `/v1/events`, fed by the delivery log.
    pub events: super::events::EventHub,
}

/// Counters for `/metrics`.
#[derive(Default)]
pub struct Metrics {
    pub requests: std::sync::atomic::AtomicU64,
    pub otps_issued: std::sync::atomic::AtomicU64,
    pub verifies_ok: std::sync::atomic::AtomicU64,
    pub verifies_failed: std::sync::atomic::AtomicU64,
    pub rate_limited: std::sync::atomic::AtomicU64,
    /// Connections answered 503 over `max_connections`.
    pub refused_connections: std::sync::atomic::AtomicU64,
    /// Requests answered 503 over `max_in_flight`.
    pub refused_in_flight: std::sync::atomic::AtomicU64,
    /// Requests answered 429 over `max_requests_per_sec`.
    pub refused_rate: std::sync::atomic::AtomicU64,
    /// Writing requests answered 507 or 503 because the store could not
    /// take them (`min_free_mib`, a failed store).
    pub refused_storage: std::sync::atomic::AtomicU64,
    /// Long polls waiting now (a gauge).
    pub long_polls: std::sync::atomic::AtomicU64,
}

/// Counts a long poll in [`Metrics::long_polls`] while it lives.
struct LongPoll<'a>(&'a std::sync::atomic::AtomicU64);

impl<'a> LongPoll<'a> {
    fn start(ctx: &'a Ctx) -> LongPoll<'a> {
        bump(&ctx.metrics.long_polls);
        LongPoll(&ctx.metrics.long_polls)
    }
}

impl Drop for LongPoll<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

pub(super) fn bump(counter: &std::sync::atomic::AtomicU64) {
    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> ApiError {
        match e {
            ServiceError::NotFound(what) => ApiError::not_found(what),
            ServiceError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            ServiceError::Member(m) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, m.code(), m.to_string()),
            ServiceError::RateLimited { retry_after } => {
                let mut err = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!("too many codes sent to this destination; retry in {retry_after} s"),
                );
                err.extra = Some(json!({"retry_after": retry_after}));
                err.retry_after = Some(retry_after);
                err
            }
            ServiceError::Verify(v) => verdict_error(&v),
            ServiceError::Store(e) => ApiError::internal(e),
        }
    }
}

impl From<WorldError> for ApiError {
    fn from(e: WorldError) -> ApiError {
        match e {
            WorldError::UnknownCarrier(_) | WorldError::Invalid(_) => ApiError::invalid(e.to_string()),
            WorldError::Store(e) => ApiError::internal(e),
        }
    }
}

impl From<crate::smtp::MailError> for ApiError {
    fn from(e: crate::smtp::MailError) -> ApiError {
        match e {
            crate::smtp::MailError::InvalidAddress => ApiError::invalid("not an email address"),
            crate::smtp::MailError::Store(e) => ApiError::internal(e),
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> ApiError {
        ApiError::internal(e)
    }
}

fn verdict_error(v: &Verdict) -> ApiError {
    match v {
        Verdict::InvalidCode { attempts_left } => {
            let mut err = ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_code",
                format!("the code is not right; {attempts_left} attempts left"),
            );
            err.extra = Some(json!({"attempts_left": attempts_left}));
            err
        }
        Verdict::Expired => ApiError::new(
            StatusCode::GONE,
            "expired",
            "the code has expired (codes are valid for 10 minutes); request a new one",
        ),
        Verdict::AlreadyUsed => ApiError::new(
            StatusCode::CONFLICT,
            "already_used",
            "this code was already used; a code works once",
        ),
        Verdict::Superseded { matched_older: Some(_) } => ApiError::new(
            StatusCode::CONFLICT,
            "superseded",
            "that is the code of an earlier request; enter the newest code",
        ),
        Verdict::Superseded { matched_older: None } => ApiError::new(
            StatusCode::CONFLICT,
            "superseded",
            "a newer code was issued; enter the newest code",
        ),
        Verdict::Locked => ApiError::new(StatusCode::LOCKED, "locked", "too many wrong codes; request a new one"),
        Verdict::Verified => ApiError::internal("verified is not an error"),
    }
}

fn ok(value: Value) -> ApiResult {
    Ok(json_response(StatusCode::OK, &value))
}

fn created(value: Value) -> ApiResult {
    Ok(json_response(StatusCode::CREATED, &value))
}

fn str_field<'a>(body: &'a Value, key: &str) -> Result<Option<&'a str>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::invalid(format!("`{key}` must be a string"))),
    }
}

fn required<'a>(body: &'a Value, key: &str) -> Result<&'a str, ApiError> {
    str_field(body, key)?.ok_or_else(|| ApiError::invalid(format!("`{key}` is required")))
}

pub fn member_json(m: &Member) -> Value {
    json!({
        "id": m.id,
        "locale": m.locale,
        "residence": m.residence,
        "email": m.email,
        "phone": m.phone.as_ref().map(|p| json!({"number": p.number, "display": member::display_number(&p.number), "verified": p.verified})),
        "notification": m.notification.map(Channel::as_str),
        "created_at": rfc3339(m.created_at),
    })
}

pub fn otp_json(o: &Otp, now: i64) -> Value {
    let destination = match o.channel {
        Channel::Sms => member::mask_number(&o.destination),
        Channel::Email => member::mask_email(&o.destination),
    };
    json!({
        "id": o.id,
        "member_id": o.member_id,
        "purpose": o.purpose,
        "channel": o.channel.as_str(),
        "destination": destination,
        "sender": o.sender,
        "issued_at": rfc3339(o.issued_at),
        "expires_at": rfc3339(o.expires_at),
        "status": o.shown_status(now),
        "attempts_left": o.attempts_left(),
        "message_id": o.message_id,
    })
}

pub fn message_json(m: &Message) -> Value {
    let mut v = message_head(m);
    v["events"] = m.events.iter().map(one_event_json).collect();
    v
}

/// A message's new event, with the message as it is now but without its
/// earlier events: one block of `/v1/events`.
pub fn event_json(m: &Message, e: &Event) -> Value {
    let mut v = message_head(m);
    v["event"] = one_event_json(e);
    v
}

/// `GET /v1/events`: a stream of the delivery log's events as they become
/// durable, of one channel, destination, member or origin if asked; 422
/// for a filter it cannot read, 503 past [`super::events::MOST_STREAMS`].
pub fn event_stream(ctx: &Ctx, req: &Req) -> Response<super::Body> {
    let filter = (|| {
        Ok::<_, ApiError>(super::events::Filter {
            channel: named(req, "channel", &Channel::ALL, Channel::as_str)?,
            to: destination_filter(req)?,
            member_id: req.query("member_id").map(str::to_string),
            origin: req.query("origin").map(str::to_string),
        })
    })();
    let opened = filter.and_then(|filter| {
        ctx.events
            .open(filter, ctx.shutdown.clone())
            .ok_or_else(|| ApiError::overloaded("too many event streams are open; retry later"))
    });
    match opened {
        Ok(body) => {
            let mut resp = Response::new(http_body_util::Either::Right(body));
            let headers = resp.headers_mut();
            headers.insert(
                hyper::header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            headers.insert(hyper::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        }
        Err(err) => err.into_response().map(http_body_util::Either::Left),
    }
}

/// `GET /v1/smsc`: each account (binds, whether one can receive, receipts
/// waiting for one) and each bind now.
fn smsc_json(ctx: &Ctx) -> Value {
    let Some(smsc) = &ctx.smsc else {
        return json!({"listening": false, "accounts": [], "binds": []});
    };
    let binds = smsc.binds.list();
    let accounts = smsc.accounts(&binds);
    let binds: Vec<Value> = binds
        .iter()
        .map(|b| {
            let mut v = serde_json::to_value(b).unwrap_or(Value::Null);
            v["bound_at"] = json!(rfc3339(b.bound_at));
            v
        })
        .collect();
    json!({"listening": true, "accounts": accounts, "binds": binds})
}

/// A message's facts, without its events.
fn message_head(m: &Message) -> Value {
    json!({
        "id": m.id,
        "channel": m.channel.as_str(),
        "to": m.to,
        "from": m.from,
        "origin": m.origin,
        "member_id": m.member_id,
        "otp_id": m.otp_id,
        "text": m.text,
        "smsc_message_id": m.smsc_message_id,
        "carrier": m.carrier,
        "state": m.state.as_str(),
        "created_at": rfc3339(m.created_at),
        "updated_at": rfc3339(m.updated_at),
    })
}

/// One event, its times in RFC 3339.
fn one_event_json(e: &Event) -> Value {
    let mut v = serde_json::to_value(e).unwrap_or(Value::Null);
    if let Some(obj) = v.as_object_mut() {
        obj.insert("at".into(), json!(rfc3339(e.at)));
        if let Some(next) = e.next_attempt_at {
            obj.insert("next_attempt_at".into(), json!(rfc3339(next)));
        }
    }
    v
}

/// `{"items": [...]}`; the message lists also carry the same list as
/// `messages`, which early clients (and the checks) read.
fn list(items: Vec<Value>, next: Option<String>, alias: Option<&str>) -> Value {
    let mut v = json!({"items": items});
    if let Some(alias) = alias {
        v[alias] = v["items"].clone();
    }
    if let Some(next) = next {
        v["next"] = json!(next);
    }
    v
}

/// `since` and `until`, each an RFC 3339 time; 422 for one that is not.
fn window(req: &Req) -> Result<Window, ApiError> {
    let time = |key: &str| match req.query(key) {
        None => Ok(None),
        Some(text) => crate::clock::parse_rfc3339(text)
            .map(Some)
            .ok_or_else(|| ApiError::invalid(format!("{key}: `{text}` is not an RFC 3339 time"))),
    };
    Ok(Window {
        since: time("since")?,
        until: time("until")?,
    })
}

/// The query parameter `key`, one of `all` by its `name`; 422 naming
/// them when it is none of them.
fn named<T: Copy>(req: &Req, key: &str, all: &[T], name: fn(T) -> &'static str) -> Result<Option<T>, ApiError> {
    let Some(text) = req.query(key) else {
        return Ok(None);
    };
    match all.iter().copied().find(|choice| name(*choice) == text) {
        Some(choice) => Ok(Some(choice)),
        None => {
            let choices: Vec<&str> = all.iter().map(|choice| name(*choice)).collect();
            Err(ApiError::invalid(format!(
                "{key}: `{text}` is not one of {}",
                choices.join(", ")
            )))
        }
    }
}

/// A long poll's wait, ended with `stopped` (what its time running out
/// answers) once the server starts stopping: a waiting suite gets its
/// answer rather than a connection cut, and does not hold the stop back.
async fn unless_stopping<T>(ctx: &Ctx, wait: impl std::future::Future<Output = T>, stopped: impl FnOnce() -> T) -> T {
    let mut stopping = ctx.shutdown.clone();
    tokio::select! {
        answer = wait => answer,
        _ = stopping.wait() => stopped(),
    }
}

/// `?to=` as the delivery log writes destinations: an address normalized,
/// a number in any spelling as E.164 (422 for one that is not a number).
fn destination_filter(req: &Req) -> Result<Option<String>, ApiError> {
    match req.query("to") {
        Some(to) if to.contains('@') => Ok(Some(mailbox_key(to))),
        Some(to) => parse_number(to).map(Some),
        None => Ok(None),
    }
}

/// The key a mailbox's arrivals are told under: its address as the
/// capture writes it (one that is not an address is read as a 422 later).
fn mailbox_key(address: &str) -> String {
    crate::smtp::mailbox::normalize_address(address).unwrap_or_else(|| address.to_string())
}

/// The longest `?wait=` (and `/wait?timeout=`) a reader may ask for.
const LONGEST_WAIT_SECS: f64 = 120.0;

/// What a reader of an inbox or mailbox asks to see: `?after=` (an RFC
/// 3339 time, or the id of the last message read) keeps only what arrived
/// later; `?wait=SECONDS` (at most 120) waits that long for something to
/// show when nothing does yet.
struct Arrival {
    after: Option<crate::changes::After>,
    wait: std::time::Duration,
}

impl Arrival {
    fn of(req: &Req) -> Result<Arrival, ApiError> {
        let after = match req.query("after") {
            None => None,
            Some(text) => Some(crate::changes::After::parse(text).ok_or_else(|| {
                ApiError::invalid("after: give an RFC 3339 time such as 2026-01-01T00:00:10+09:00, or a message id")
            })?),
        };
        let wait = match req.query("wait") {
            None => 0.0,
            Some(text) => text
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.0)
                .ok_or_else(|| ApiError::invalid(format!("wait: `{text}` is not a number of seconds")))?
                .min(LONGEST_WAIT_SECS),
        };
        Ok(Arrival {
            after,
            wait: std::time::Duration::from_secs_f64(wait),
        })
    }

    /// Reads with `check` until it finds something or the wait is over,
    /// woken by each change to `key`.
    async fn read<T, E: Into<ApiError>>(
        &self,
        ctx: &Ctx,
        changes: &crate::changes::Changes,
        key: &str,
        check: impl FnMut() -> Result<Option<T>, E>,
    ) -> Result<Option<T>, ApiError> {
        let _counted = (!self.wait.is_zero()).then(|| LongPoll::start(ctx));
        let waited = async { changes.wait_until(key, self.wait, check).await.map_err(Into::into) };
        unless_stopping(ctx, waited, || Ok(None)).await
    }

    /// The name of what was not found, saying what the reader asked for.
    fn what(&self, thing: &str) -> String {
        let mut what = thing.to_string();
        if let Some(after) = &self.after {
            what = format!("{what} {after}");
        }
        if !self.wait.is_zero() {
            what = format!("{what} within {} s", self.wait.as_secs_f64());
        }
        what
    }
}

fn parse_number(input: &str) -> Result<String, ApiError> {
    member::parse_mobile(input)
        .map_err(|e: MemberError| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.code(), e.to_string()))
}

fn check_token(ctx: &Ctx, req: &Req) -> Result<(), ApiError> {
    if ctx.loopback {
        return Ok(());
    }
    match (&ctx.admin_token, &req.token) {
        (Some(want), Some(got)) if want == got => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "simulation routes need `Authorization: Bearer <admin_token>` when otpgate listens beyond loopback",
        )),
    }
}

pub async fn route(ctx: &Ctx, req: Req) -> ApiResult {
    bump(&ctx.metrics.requests);
    let segs: Vec<&str> = req.segments.iter().map(String::as_str).collect();
    let m = &req.method;
    if segs.first() == Some(&"v1") && segs.get(1) == Some(&"sim") {
        check_token(ctx, &req)?;
    }
    match (m, segs.as_slice()) {
        (&Method::GET, ["healthz"]) => health(ctx),
        (&Method::GET, ["metrics"]) => metrics(ctx),
        (&Method::GET, ["v1", "openapi.json"]) => ok(super::openapi::document()),
        (&Method::POST, ["v1", "members"]) => create_member(ctx, &req).await,
        (&Method::GET, ["v1", "members"]) => find_members(ctx, &req),
        (&Method::GET, ["v1", "members", id]) => ok(member_json(&ctx.service.member(id)?)),
        (&Method::PUT, ["v1", "members", id, "email"]) => {
            let body = req.json()?;
            ok(member_json(
                &ctx.service.set_email(id, required(&body, "email")?).await?,
            ))
        }
        (&Method::POST, ["v1", "members", id, "phone"]) => register_phone(ctx, id, &req).await,
        (&Method::POST, ["v1", "members", id, "phone", "verify"]) => {
            let body = req.json()?;
            let code = required(&body, "code")?;
            match ctx.service.verify_phone(id, code).await {
                Ok(member) => {
                    bump(&ctx.metrics.verifies_ok);
                    ok(json!({"status": "verified", "member": member_json(&member)}))
                }
                Err(e) => {
                    bump(&ctx.metrics.verifies_failed);
                    Err(e.into())
                }
            }
        }
        (&Method::PUT, ["v1", "members", id, "notification"]) => {
            let body = req.json()?;
            let channel = match required(&body, "channel")? {
                "sms" => Channel::Sms,
                "email" => Channel::Email,
                other => return Err(ApiError::invalid(format!("channel `{other}` is not `sms` or `email`"))),
            };
            ok(member_json(&ctx.service.set_notification(id, channel).await?))
        }
        (&Method::POST, ["v1", "otps"]) => {
            let body = req.json()?;
            let member_id = required(&body, "member_id")?;
            let purpose = str_field(&body, "purpose")?.unwrap_or("login");
            let otp = ctx.service.issue(member_id, purpose).await.inspect_err(|e| {
                if matches!(e, ServiceError::RateLimited { .. }) {
                    bump(&ctx.metrics.rate_limited);
                }
            })?;
            bump(&ctx.metrics.otps_issued);
            created(otp_json(&otp, ctx.clock.now()))
        }
        (&Method::GET, ["v1", "otps", id]) => ok(otp_json(&ctx.service.otp(id)?, ctx.clock.now())),
        (&Method::POST, ["v1", "otps", id, "verify"]) => {
            let body = req.json()?;
            let code = required(&body, "code")?;
            match ctx.service.verify(id, code).await {
                Ok(otp) => {
                    bump(&ctx.metrics.verifies_ok);
                    ok(json!({"status": "verified", "otp": otp_json(&otp, ctx.clock.now())}))
                }
                Err(e) => {
                    bump(&ctx.metrics.verifies_failed);
                    Err(e.into())
                }
            }
        }
        (&Method::POST, ["v1", "otps", id, "resend"]) => {
            let otp = ctx.service.resend(id).await?;
            bump(&ctx.metrics.otps_issued);
            created(otp_json(&otp, ctx.clock.now()))
        }
        (&Method::GET, ["v1", "messages"]) => {
            let q = Query {
                member_id: req.query("member_id").map(str::to_string),
                to: destination_filter(&req)?,
                otp_id: req.query("otp_id").map(str::to_string),
                // The id an ESME was given names its destinations' and
                // parts' messages in the simulated network; one the network
                // does not know (an external SMSC's) is looked up as it is.
                smsc_message_ids: match req.query("smsc_message_id") {
                    Some(id) => Some(ctx.network.ids_named(id)?),
                    None => None,
                },
                before: req.query("before").map(str::to_string),
                limit: req.query("limit").and_then(|l| l.parse().ok()).unwrap_or(100),
                state: named(&req, "state", &State::ALL, State::as_str)?,
                channel: named(&req, "channel", &Channel::ALL, Channel::as_str)?,
                window: window(&req)?,
            };
            let (items, next) = ctx.log.query(&q)?;
            ok(list(items.iter().map(message_json).collect(), next, Some("messages")))
        }
        (&Method::GET, ["v1", "messages", id, "wait"]) => wait_for_message(ctx, id, &req).await,
        (&Method::GET, ["v1", "messages", id]) => ok(message_json(
            &ctx.log.get(id)?.ok_or_else(|| ApiError::not_found("message"))?,
        )),
        (&Method::GET, ["v1", "diagnostics", "members", id]) => {
            let member = ctx.service.member(id)?;
            diagnostics(ctx, &req, crate::desk::Subject::Member(member))
        }
        (&Method::GET, ["v1", "diagnostics", "destinations", destination]) => {
            let subject = ctx.desk.lookup(destination)?;
            diagnostics(ctx, &req, subject)
        }
        (&Method::GET, ["v1", "smsc"]) => ok(smsc_json(ctx)),
        (&Method::GET, ["v1", "carriers"]) => {
            let items: Vec<Value> = ctx
                .world
                .carriers
                .all()
                .into_iter()
                .map(|c| serde_json::to_value(c).unwrap_or(Value::Null))
                .collect();
            ok(list(items, None, None))
        }
        (&Method::GET, ["v1", "sim", "clock"]) => {
            ok(json!({"now": rfc3339(ctx.clock.now()), "virtual": ctx.clock.is_virtual()}))
        }
        (&Method::POST, ["v1", "sim", "clock", "advance"]) => advance(ctx, &req).await,
        (&Method::GET, ["v1", "sim", "chaos"]) => ok(serde_json::to_value(ctx.world.chaos()).unwrap_or(Value::Null)),
        (&Method::PUT, ["v1", "sim", "chaos"]) => {
            let body = req.json()?;
            let mut current = serde_json::to_value(ctx.world.chaos()).unwrap_or(Value::Null);
            crate::sim::merge(&mut current, &body);
            let chaos = serde_json::from_value(current).map_err(|e| ApiError::invalid(format!("chaos: {e}")))?;
            ctx.world.set_chaos(chaos);
            ok(serde_json::to_value(ctx.world.chaos()).unwrap_or(Value::Null))
        }
        (&Method::GET, ["v1", "sim", "handsets"]) => {
            let items = ctx
                .world
                .all_handsets()?
                .into_iter()
                .map(|(n, h)| handset_json(&n, &h))
                .collect();
            ok(list(items, None, None))
        }
        (&Method::PUT, ["v1", "sim", "handsets", number]) => {
            let number = parse_number(number)?;
            let body = req.json()?;
            if !body.is_object() {
                return Err(ApiError::invalid("the handset must be a JSON object"));
            }
            let (handset, before) = ctx.world.put_handset(&number, &body).await?;
            // The network's alert (as a phone that attaches again, or
            // comes back into coverage, triggers one): only a handset that
            // was absent and now is not gets its waiting messages at once.
            // Any other change waits for the next planned attempt.
            if before.as_ref().is_some_and(|h| h.absent().is_some()) && handset.absent().is_none() {
                ctx.network.handset_changed(&number).await;
            }
            let status = if before.is_none() {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(json_response(status, &handset_json(&number, &handset)))
        }
        (&Method::GET, ["v1", "sim", "handsets", number]) => {
            let number = parse_number(number)?;
            let handset = ctx
                .desk
                .handset(&number)?
                .ok_or_else(|| ApiError::not_found("handset"))?;
            ok(handset_json(&number, &handset))
        }
        (&Method::GET, ["v1", "sim", "handsets", number, "messages"]) => {
            let number = parse_number(number)?;
            let arrival = Arrival::of(&req)?;
            let inbox = arrival
                .read(ctx, ctx.world.arrivals(), &number, || {
                    let inbox = ctx.world.inbox_after(&number, arrival.after.as_ref())?;
                    Ok::<_, ApiError>(Some(inbox).filter(|i| !i.is_empty()))
                })
                .await?
                .unwrap_or_default();
            let items = inbox.iter().rev().map(|m| json!({"from": m.from, "text": m.text, "received_at": rfc3339(m.received_at), "message_id": m.message_id})).collect();
            ok(list(items, None, Some("messages")))
        }
        (&Method::DELETE, ["v1", "sim", "handsets", number, "messages"]) => {
            let number = parse_number(number)?;
            ok(json!({"deleted": ctx.world.clear_inbox(&number).await?}))
        }
        (&Method::POST, ["v1", "sim", "handsets", number, "send"]) => send_from_handset(ctx, number, &req).await,
        (&Method::GET, ["v1", "sim", "handsets", number, "otp"]) => {
            let number = parse_number(number)?;
            let arrival = Arrival::of(&req)?;
            let (code, m) = arrival
                .read(ctx, ctx.world.arrivals(), &number, || {
                    ctx.world.newest_code_after(&number, arrival.after.as_ref())
                })
                .await?
                .ok_or_else(|| ApiError::not_found(&arrival.what("code on this handset")))?;
            ok(json!({"code": code, "from": m.from, "received_at": rfc3339(m.received_at), "message_id": m.message_id}))
        }
        (&Method::GET, ["v1", "mail"]) => {
            let limit = req
                .query("limit")
                .and_then(|l| l.parse().ok())
                .unwrap_or(50)
                .clamp(1, 500);
            let page = ctx
                .mail
                .list(req.query("q"), window(&req)?, req.query("before"), limit)?;
            let items = page
                .items
                .iter()
                .map(|m| serde_json::to_value(m).unwrap_or(Value::Null))
                .collect();
            ok(list(items, page.next, None))
        }
        (&Method::DELETE, ["v1", "mail"]) => {
            check_token(ctx, &req)?;
            ctx.mail.delete_all().await?;
            ok(json!({"deleted": "all"}))
        }
        (&Method::GET, ["v1", "mail", id]) => {
            let detail = ctx.mail.get(id)?.ok_or_else(|| ApiError::not_found("mail"))?;
            ok(serde_json::to_value(detail).unwrap_or(Value::Null))
        }
        (&Method::GET, ["v1", "mail", id, "raw"]) => {
            let raw = ctx.mail.raw(id)?.ok_or_else(|| ApiError::not_found("mail"))?;
            Ok(text_response(
                StatusCode::OK,
                "message/rfc822",
                String::from_utf8_lossy(&raw).into_owned(),
            ))
        }
        (&Method::GET, ["v1", "mail", id, "parts", index]) => {
            let index: usize = index
                .parse()
                .map_err(|_| ApiError::invalid("part: the index of one of the mail's parts, from 0"))?;
            let (part, bytes) = ctx
                .mail
                .part(id, index)?
                .ok_or_else(|| ApiError::not_found("mail part"))?;
            Ok(download(&part, bytes))
        }
        (&Method::DELETE, ["v1", "mail", id]) => {
            check_token(ctx, &req)?;
            if ctx.mail.delete(id).await? {
                ok(json!({"deleted": id}))
            } else {
                Err(ApiError::not_found("mail"))
            }
        }
        (&Method::PUT, ["v1", "sim", "mailboxes", address]) => {
            let body = req.json()?;
            let patch: crate::smtp::MailboxPatch =
                serde_json::from_value(body).map_err(|e| ApiError::invalid(format!("mailbox: {e}")))?;
            let mailbox = ctx.mail.put_mailbox(address, patch).await?;
            ok(serde_json::to_value(mailbox).unwrap_or(Value::Null))
        }
        (&Method::GET, ["v1", "sim", "mailboxes", address]) => {
            ok(serde_json::to_value(ctx.mail.get_mailbox(address)?).unwrap_or(Value::Null))
        }
        (&Method::GET, ["v1", "sim", "mailboxes", address, "messages"]) => {
            let arrival = Arrival::of(&req)?;
            let items = arrival
                .read(ctx, ctx.mail.arrivals(), &mailbox_key(address), || {
                    let shown = ctx.mail.mailbox_messages_after(address, arrival.after.as_ref())?;
                    Ok::<_, ApiError>(Some(shown).filter(|s| !s.is_empty()))
                })
                .await?
                .unwrap_or_default()
                .iter()
                .map(|m| serde_json::to_value(m).unwrap_or(Value::Null))
                .collect();
            ok(list(items, None, Some("messages")))
        }
        (&Method::DELETE, ["v1", "sim", "mailboxes", address, "messages"]) => {
            ok(json!({"deleted": ctx.mail.clear_mailbox(address).await?}))
        }
        (&Method::GET, ["v1", "sim", "mailboxes", address, "otp"]) => {
            let arrival = Arrival::of(&req)?;
            let code = arrival
                .read(ctx, ctx.mail.arrivals(), &mailbox_key(address), || {
                    ctx.mail.newest_code_after(address, arrival.after.as_ref())
                })
                .await?
                .ok_or_else(|| ApiError::not_found(&arrival.what("code in this mailbox")))?;
            ok(serde_json::to_value(code).unwrap_or(Value::Null))
        }
        (&Method::GET, []) | (&Method::GET, ["console", ..]) => super::console::route(ctx, &req),
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no route for {} /{}", req.method, req.segments.join("/")),
        )),
    }
}

fn diagnostics(ctx: &Ctx, req: &Req, subject: crate::desk::Subject) -> ApiResult {
    let lang = match req.query("lang") {
        Some(l @ ("ja" | "en")) => Some(l),
        Some(other) => return Err(ApiError::invalid(format!("lang `{other}` is not `ja` or `en`"))),
        None => None,
    };
    let text = match req.query("format") {
        None | Some("json") => false,
        Some("text") => true,
        Some(other) => return Err(ApiError::invalid(format!("format `{other}` is not `json` or `text`"))),
    };
    let dossier = ctx.desk.dossier(&subject)?;
    let now = ctx.clock.now();
    let report = ctx.desk.diagnose(&dossier, lang, now);
    if text {
        return Ok(text_response(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            crate::diagnose::render_text(&report),
        ));
    }
    let mut answer = serde_json::to_value(&report).map_err(ApiError::internal)?;
    // The detail behind the findings: the member, each OTP (with every
    // entered code's result, never the code), each message with its
    // events, and the handset or mailbox state.
    answer["member"] = dossier.member.as_ref().map(member_json).unwrap_or(Value::Null);
    answer["otps"] = dossier
        .otps
        .iter()
        .map(|o| {
            let mut v = otp_json(o, now);
            v["attempts"] = json!(o.attempts);
            v["superseded_by"] = json!(o.superseded_by);
            v["verified_at"] = json!(o.verified_at.map(rfc3339));
            v["entries"] = o
                .entries
                .iter()
                .map(|e| json!({"at": rfc3339(e.at), "result": e.result, "matched_otp": e.matched_otp}))
                .collect();
            v
        })
        .collect();
    answer["messages"] = dossier.messages.iter().map(message_json).collect();
    answer["handset"] = dossier
        .handset
        .as_ref()
        .map(|(n, h)| handset_json(n, h))
        .unwrap_or(Value::Null);
    answer["mailbox"] = dossier
        .mailbox
        .as_ref()
        .map(|m| serde_json::to_value(m).unwrap_or(Value::Null))
        .unwrap_or(Value::Null);
    ok(answer)
}

fn handset_json(number: &str, h: &crate::carrier::HandsetState) -> Value {
    let mut v = serde_json::to_value(h).unwrap_or(Value::Null);
    if let Some(obj) = v.as_object_mut() {
        obj.insert("number".into(), json!(number));
        obj.insert("display".into(), json!(member::display_number(number)));
    }
    v
}

async fn create_member(ctx: &Ctx, req: &Req) -> ApiResult {
    let body = req.json()?;
    if !body.is_object() {
        return Err(ApiError::invalid("the member must be a JSON object"));
    }
    let member = ctx
        .service
        .create_member(NewMember {
            id: str_field(&body, "id")?.map(str::to_string),
            locale: str_field(&body, "locale")?.map(str::to_string),
            residence: str_field(&body, "residence")?.map(str::to_string),
            email: str_field(&body, "email")?.map(str::to_string),
        })
        .await?;
    created(member_json(&member))
}

fn find_members(ctx: &Ctx, req: &Req) -> ApiResult {
    let members = match (req.query("phone"), req.query("email")) {
        (None, None) => ctx.service.all_members()?,
        (phone, email) => ctx.service.find_members(phone, email)?,
    };
    ok(list(members.iter().map(member_json).collect(), None, None))
}

/// A simulated handset sends an SMS to an ESME (mobile originated): 202
/// once it is stored and logged; the ESME gets it as a `deliver_sm`.
async fn send_from_handset(ctx: &Ctx, number: &str, req: &Req) -> ApiResult {
    use crate::sim::sms::MobileRefusal;
    let number = parse_number(number)?;
    let body = req.json()?;
    let to = required(&body, "to")?;
    let text = required(&body, "text")?;
    let system_id = str_field(&body, "system_id")?;
    let sent = ctx
        .network
        .send_from_handset(&number, to, text, system_id)
        .await
        .map_err(|e| match e {
            MobileRefusal::Invalid(m) => ApiError::invalid(m),
            MobileRefusal::NoEsme(m) => ApiError::new(StatusCode::CONFLICT, "no_esme", m),
            MobileRefusal::Handset(m) => ApiError::new(StatusCode::CONFLICT, "handset_cannot_send", m),
            MobileRefusal::Store(e) => e.into(),
        })?;
    Ok(json_response(
        StatusCode::ACCEPTED,
        &json!({"id": sent.id, "system_id": sent.system_id, "from": number, "to": to, "log_id": sent.log_id}),
    ))
}

async fn register_phone(ctx: &Ctx, id: &str, req: &Req) -> ApiResult {
    let body = req.json()?;
    let number = required(&body, "number")?;
    let (member, otp) = ctx.service.register_phone(id, number).await?;
    Ok(json_response(
        StatusCode::ACCEPTED,
        &json!({"member": member_json(&member), "verification": otp_json(&otp, ctx.clock.now())}),
    ))
}

/// Long poll: answers when the message reaches `state` (or any final state
/// with `state=final`), or after `timeout` seconds (default 30, at most 120)
/// with the message as it is and `"timed_out": true`.
async fn wait_for_message(ctx: &Ctx, id: &str, req: &Req) -> ApiResult {
    // `None`: any final state.
    let wanted = match req.query("state").unwrap_or("final") {
        "final" => None,
        name => Some(State::named(name).ok_or_else(|| {
            let known: Vec<&str> = State::ALL.iter().map(|s| s.as_str()).collect();
            ApiError::invalid(format!("state `{name}` is not one of final, {}", known.join(", ")))
        })?),
    };
    let seconds = req
        .query("timeout")
        .and_then(|t| t.parse::<f64>().ok())
        .unwrap_or(30.0)
        .clamp(0.0, LONGEST_WAIT_SECS);
    let reached = |m: &Message| wanted.map_or(m.state.is_final(), |state| m.state == state);
    let _counted = LongPoll::start(ctx);
    let waited = ctx
        .log
        .wait_for(id, std::time::Duration::from_secs_f64(seconds), reached);
    let message = unless_stopping(ctx, waited, || ctx.log.get(id))
        .await?
        .ok_or_else(|| ApiError::not_found("message"))?;
    let mut answer = message_json(&message);
    answer["timed_out"] = json!(!reached(&message));
    ok(answer)
}

async fn advance(ctx: &Ctx, req: &Req) -> ApiResult {
    if !ctx.clock.is_virtual() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "clock_not_virtual",
            "start otpgate with --virtual-clock to advance time",
        ));
    }
    let body = req.json()?;
    let seconds = body
        .get("seconds")
        .and_then(Value::as_f64)
        .ok_or_else(|| ApiError::invalid("`seconds` (a number) is required"))?;
    if !(0.0..=366.0 * 86400.0).contains(&seconds) {
        return Err(ApiError::invalid("`seconds` must be between 0 and one year"));
    }
    let now = ctx.clock.advance((seconds * 1000.0) as i64).await;
    ctx.world.save_clock(now).await?;
    ok(json!({"now": rfc3339(now), "virtual": true}))
}

/// Liveness: 200 while the server takes work, with `low_on_space` while
/// it refuses new work for want of disk space (that passes by itself);
/// 503 once its store failed, which a restart puts right.
fn health(ctx: &Ctx) -> ApiResult {
    match ctx.store.refusal() {
        None => ok(json!({"status": "ok"})),
        Some(refusal) if refusal.is_temporary() => {
            ok(json!({"status": "low_on_space", "message": refusal.to_string()}))
        }
        Some(refusal) => Ok(json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "failed", "message": refusal.to_string()}),
        )),
    }
}

/// The Prometheus text format, written one metric family at a time.
#[derive(Default)]
struct Exposition(String);

impl Exposition {
    /// A family of one sample.
    fn one(&mut self, name: &str, kind: &str, value: impl std::fmt::Display) {
        self.by(name, kind, "", &[("", value)]);
    }

    /// A family with one sample per value of `label` (none when empty).
    fn by<V: std::fmt::Display>(&mut self, name: &str, kind: &str, label: &str, samples: &[(&str, V)]) {
        use std::fmt::Write;
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
        for (value, sample) in samples {
            let _ = match label {
                "" => writeln!(self.0, "{name} {sample}"),
                _ => writeln!(self.0, "{name}{{{label}=\"{value}\"}} {sample}"),
            };
        }
    }
}

fn metrics(ctx: &Ctx) -> ApiResult {
    use std::sync::atomic::Ordering::Relaxed;
    let (m, smsc, smtp) = (&ctx.metrics, &ctx.smsc_counters, &ctx.smtp_counters);
    let mut out = Exposition::default();
    out.one("otpgate_http_requests_total", "counter", m.requests.load(Relaxed));
    out.one("otpgate_http_long_polls_waiting", "gauge", m.long_polls.load(Relaxed));
    out.one("otpgate_http_event_streams_open", "gauge", ctx.events.streams() as u64);
    out.one("otpgate_otps_issued_total", "counter", m.otps_issued.load(Relaxed));
    let verifies = [("ok", &m.verifies_ok), ("failed", &m.verifies_failed)];
    out.by(
        "otpgate_verifies_total",
        "counter",
        "result",
        &verifies.map(|(r, c)| (r, c.load(Relaxed))),
    );
    out.one(
        "otpgate_sends_rate_limited_total",
        "counter",
        m.rate_limited.load(Relaxed),
    );
    let refused = [
        ("connections", &m.refused_connections),
        ("in_flight", &m.refused_in_flight),
        ("rate", &m.refused_rate),
        ("storage", &m.refused_storage),
    ];
    out.by(
        "otpgate_http_refused_total",
        "counter",
        "reason",
        &refused.map(|(r, c)| (r, c.load(Relaxed))),
    );
    // Without an SMS channel there is no link to report.
    if let Some(link) = &ctx.sms_link {
        out.one("otpgate_smpp_client_bound", "gauge", u8::from(link.is_connected()));
    }
    out.one("otpgate_smsc_pending", "gauge", ctx.network.pending());
    let answers = [
        ("ok", &smsc.submits_ok),
        ("throttled", &smsc.throttled),
        ("queue_full", &smsc.queue_full),
        ("other_error", &smsc.refused_other),
    ];
    out.by(
        "otpgate_smpp_submit_sm_total",
        "counter",
        "answer",
        &answers.map(|(a, c)| (a, c.load(Relaxed))),
    );
    out.one(
        "otpgate_smpp_tls_handshakes_failed_total",
        "counter",
        smsc.tls_handshakes_failed.load(Relaxed),
    );
    out.one(
        "otpgate_smtp_tls_handshakes_failed_total",
        "counter",
        smtp.tls_handshakes_failed.load(Relaxed),
    );
    out.one("otpgate_smtp_accepted_total", "counter", smtp.accepted.load(Relaxed));
    let refused = [
        ("connections", &smtp.refused_connections),
        ("busy", &smtp.refused_busy),
        ("storage", &smtp.refused_storage),
    ];
    out.by(
        "otpgate_smtp_refused_total",
        "counter",
        "reason",
        &refused.map(|(r, c)| (r, c.load(Relaxed))),
    );
    // Asked first: it reads the free space when a reading is due.
    let refusal = ctx.store.refusal();
    if let Some((free, min_free)) = ctx.store.space() {
        // Unreadable free space is reported as none known.
        out.one(
            "otpgate_store_free_bytes",
            "gauge",
            if free == u64::MAX { -1 } else { free as i64 },
        );
        out.one("otpgate_store_min_free_bytes", "gauge", min_free);
    }
    let refusing = [
        (
            "low_space",
            u8::from(refusal.as_ref().is_some_and(|r| r.is_temporary())),
        ),
        ("failed", u8::from(refusal.as_ref().is_some_and(|r| !r.is_temporary()))),
    ];
    out.by("otpgate_store_refusing", "gauge", "reason", &refusing);
    let p = ctx.store.pressure();
    out.one("otpgate_store_pending_bytes", "gauge", p.pending_bytes);
    out.one("otpgate_store_write_waits_total", "counter", p.write_waits);
    out.one(
        "otpgate_store_write_wait_seconds_total",
        "counter",
        p.write_wait_seconds,
    );
    Ok(text_response(StatusCode::OK, "text/plain; version=0.0.4", out.0))
}

/// A mail part as a download. It is always an attachment, never shown in
/// place: a part is whatever the mail's sender wrote, and an HTML or SVG
/// part rendered from the console's origin could run its script there.
/// The sandbox policy and `nosniff` hold even for a browser that shows it.
fn download(part: &crate::smtp::MailPart, bytes: Vec<u8>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    let headers = resp.headers_mut();
    let content_type =
        HeaderValue::from_str(&part.content_type).unwrap_or(HeaderValue::from_static("application/octet-stream"));
    headers.insert(hyper::header::CONTENT_TYPE, content_type);
    let name = part.name.clone().unwrap_or_else(|| format!("part-{}", part.index));
    let fallback: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let disposition = format!(
        "attachment; filename=\"{fallback}\"; filename*=UTF-8''{}",
        super::client::segment(&name)
    );
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        headers.insert(hyper::header::CONTENT_DISPOSITION, v);
    }
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static("sandbox; default-src 'none'"),
    );
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    resp
}

//! The HTTP API and the support console: the only module that knows JSON
//! request and response shapes and HTML.
//!
//! A small hand-written router over hyper 1. Errors are typed (`ApiError`)
//! and mapped to a status and `{"error": {"code", "message"}}` in one place;
//! a client's mistake is not logged as an error.
//!
//! Admission control happens here, before a request's body is read: past
//! the connection cap, the in-flight cap or the rate limit ([`Limits`]) the
//! answer is an immediate 503 or 429 with `Retry-After`, never a wait in a
//! queue. Which requests count is decided by [`RequestClass`], which the
//! OpenAPI document reads too.

mod api;
pub mod client;
mod console;
pub mod events;
pub mod openapi;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::admission::RateLimit;
use crate::shutdown::Shutdown;

pub use api::Ctx;

/// The largest request body accepted.
const MAX_BODY: usize = 1024 * 1024;
/// How long a request body may take to arrive once the head has: a client
/// that stalls mid-body must not hold a connection (and its permit) forever.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// What `Retry-After` says on a refusal for overload: the in-flight and
/// connection caps free up as fast as requests finish, and a rate limit's
/// bucket holds one second's worth.
const RETRY_AFTER_SECS: i64 = 1;
/// Connections over the cap being answered 503 at once; past this many the
/// next is closed without an answer, so a flood cannot pile up tasks.
const MAX_REFUSING: usize = 64;
/// How long a connection over the cap may take to send its request head
/// before it is closed without an answer.
const REFUSAL_HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// The HTTP server's admission limits (the defaults are in
/// [`crate::config::HttpAdmission`]).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections served at once; one more is answered 503 and closed.
    pub max_connections: usize,
    /// Counted requests (see [`RequestClass`]) being worked on at once;
    /// one more is answered 503 at once.
    pub max_in_flight: usize,
    /// Metered requests a second; above it they are answered 429. `None`:
    /// no limit.
    pub max_requests_per_sec: Option<u32>,
}

/// How admission control treats a request, from its method and path alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestClass {
    /// `/healthz`, `/metrics`, the long polls (`/v1/messages/{id}/wait`,
    /// and a read with `?wait=`) and the event streams (`/v1/events`,
    /// capped by their own count): never refused by the in-flight cap or the
    /// rate limit. Health and metrics are cheap and matter most when the
    /// server is overloaded; a long poll waits without working, and
    /// counting it would let a few waiting test suites starve the API.
    Exempt,
    /// Counted against `max_in_flight`: the reads (GET).
    Counted,
    /// Counted against `max_in_flight` and `max_requests_per_sec`: every
    /// route that changes something (every method but GET and HEAD).
    Metered,
}

impl RequestClass {
    /// The class of `method` on the path `segments` (route templates such as
    /// `{id}` work too); `waits` when the query asks for a long poll.
    pub fn of(method: &Method, segments: &[&str], waits: bool) -> RequestClass {
        let read = method == Method::GET || method == Method::HEAD;
        match segments {
            ["healthz"] | ["metrics"] | ["v1", "messages", _, "wait"] | ["v1", "events"] if read => {
                RequestClass::Exempt
            }
            _ if read && waits => RequestClass::Exempt,
            _ if read => RequestClass::Counted,
            _ => RequestClass::Metered,
        }
    }
}

/// The in-flight cap and the rate limit, shared by every connection.
struct Admission {
    in_flight: Arc<Semaphore>,
    requests: RateLimit,
}

impl Admission {
    fn new(limits: &Limits) -> Admission {
        Admission {
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight.clamp(1, Semaphore::MAX_PERMITS))),
            requests: RateLimit::new(limits.max_requests_per_sec),
        }
    }

    /// Lets a request in (holding its in-flight permit until it is
    /// answered) or says at once why not.
    fn admit(&self, ctx: &Ctx, class: RequestClass) -> Result<Option<OwnedSemaphorePermit>, ApiError> {
        if class == RequestClass::Exempt {
            return Ok(None);
        }
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            api::bump(&ctx.metrics.refused_in_flight);
            return Err(ApiError::overloaded("the server is busy with other requests"));
        };
        if class == RequestClass::Metered {
            if let Some(refusal) = ctx.store.refusal() {
                api::bump(&ctx.metrics.refused_storage);
                return Err(ApiError::storage(&refusal));
            }
        }
        if class == RequestClass::Metered && !self.requests.admit(tokio::time::Instant::now()) {
            api::bump(&ctx.metrics.refused_rate);
            let mut err = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("too many requests to this server; retry in {RETRY_AFTER_SECS} s"),
            );
            err.extra = Some(json!({"retry_after": RETRY_AFTER_SECS}));
            err.retry_after = Some(RETRY_AFTER_SECS);
            return Err(err);
        }
        Ok(Some(permit))
    }
}

/// An error answer: status, stable code, message and extra fields.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub extra: Option<Value>,
    pub retry_after: Option<i64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            extra: None,
            retry_after: None,
        }
    }

    pub fn not_found(what: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("{what} not found"))
    }

    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
    }

    /// 503 `overloaded` with `Retry-After`: refused at once, come back soon.
    pub fn overloaded(message: impl Into<String>) -> ApiError {
        let mut err = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", message);
        err.extra = Some(json!({"retry_after": RETRY_AFTER_SECS}));
        err.retry_after = Some(RETRY_AFTER_SECS);
        err
    }

    /// A request that would write, refused because the store cannot take
    /// it: 507 Insufficient Storage (RFC 4918) while the disk is short of
    /// space, which passes by itself; 503 once the store failed.
    pub fn storage(refusal: &crate::store::Refusal) -> ApiError {
        if !refusal.is_temporary() {
            return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "storage_failed", refusal.to_string());
        }
        const RETRY: i64 = 10;
        let mut err = ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "insufficient_storage",
            refusal.to_string(),
        );
        err.extra = Some(json!({"retry_after": RETRY}));
        err.retry_after = Some(RETRY);
        err
    }

    pub fn internal(cause: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %cause, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the server log",
        )
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        let mut error = json!({"code": self.code, "message": self.message});
        if let (Some(Value::Object(extra)), Some(obj)) = (self.extra, error.as_object_mut()) {
            obj.extend(extra);
        }
        let mut resp = json_response(self.status, &json!({"error": error}));
        if let Some(secs) = self.retry_after {
            if let Ok(v) = secs.to_string().parse() {
                resp.headers_mut().insert(hyper::header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

pub type ApiResult = Result<Response<Full<Bytes>>, ApiError>;

pub fn json_response(status: StatusCode, value: &Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

pub fn text_response(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    resp
}

/// A request as the handlers see it: decoded path segments, query and body.
pub struct Req {
    pub method: Method,
    pub segments: Vec<String>,
    pub query: Vec<(String, String)>,
    /// The address as sent, for [`Req::as_form`] (a cheap clone).
    pub uri: hyper::Uri,
    pub body: Bytes,
    pub token: Option<String>,
}

impl Req {
    /// This request with its query read as a browser's form sends it: a
    /// `+` is a space (a `+` typed is sent as `%2B`). The API reads a `+`
    /// as itself, since `?to=+81...` is written by hand.
    pub fn as_form(&self) -> Req {
        let query = parse_query(self.uri.query().map(|q| q.replace('+', "%20")).as_deref());
        Req {
            method: self.method.clone(),
            segments: self.segments.clone(),
            query,
            uri: self.uri.clone(),
            body: Bytes::new(),
            token: self.token.clone(),
        }
    }

    pub fn query(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    /// The body as JSON, or `malformed_json`.
    pub fn json(&self) -> Result<Value, ApiError> {
        if self.body.iter().all(|b| b.is_ascii_whitespace()) {
            return Ok(json!({}));
        }
        serde_json::from_slice(&self.body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("the body is not valid JSON: {e}"),
            )
        })
    }
}

/// Percent-decodes one path segment or query part (`+` stays `+`, so
/// `+81...` numbers survive unencoded).
pub fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(hi * 16 + lo);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(q: Option<&str>) -> Vec<(String, String)> {
    q.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// What the server answers: a whole body, or the stream of `/v1/events`.
type Body = http_body_util::Either<Full<Bytes>, events::StreamingBody>;

async fn handle(
    ctx: Arc<Ctx>,
    admission: Arc<Admission>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let streams = req.method() == Method::GET && req.uri().path().trim_end_matches('/') == "/v1/events";
    if streams {
        let req = Req {
            method: Method::GET,
            segments: vec!["v1".into(), "events".into()],
            query: parse_query(req.uri().query()),
            uri: req.uri().clone(),
            body: Bytes::new(),
            token: None,
        };
        return Ok(api::event_stream(&ctx, &req));
    }
    let answer = answer(ctx, admission, req).await;
    Ok(answer.map(http_body_util::Either::Left))
}

async fn answer(ctx: Arc<Ctx>, admission: Arc<Admission>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let segments: Vec<String> = req
        .uri()
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    // Admitted (or refused) before the body is read: a refused request
    // costs no more than its head.
    let uri = req.uri().clone();
    let query = parse_query(uri.query());
    let waits = query.iter().any(|(key, _)| key == "wait");
    let class = RequestClass::of(&method, &segments.iter().map(String::as_str).collect::<Vec<_>>(), waits);
    let _in_flight = match admission.admit(&ctx, class) {
        Ok(permit) => permit,
        Err(refusal) => return refusal.into_response(),
    };
    let token = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    // A body that is too large, cut short, badly chunked or stalled gets
    // its own answer; only the first is "too large".
    let body = match tokio::time::timeout(BODY_TIMEOUT, Limited::new(req.into_body(), MAX_BODY).collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            let err = ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("request bodies are limited to {MAX_BODY} bytes"),
            );
            return err.into_response();
        }
        Ok(Err(e)) => {
            let err = ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_request",
                format!("the request body could not be read: {e}"),
            );
            return err.into_response();
        }
        Err(_) => {
            let err = ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!("the request body did not arrive within {} s", BODY_TIMEOUT.as_secs()),
            );
            return err.into_response();
        }
    };
    let req = Req {
        method,
        segments,
        query,
        uri,
        body,
        token,
    };
    let answer = api::route(&ctx, req).await.map_err(|err| {
        // What the failed store could not read or write is said as such,
        // not as an internal error.
        if err.status != StatusCode::INTERNAL_SERVER_ERROR {
            return err;
        }
        match ctx.store.refusal() {
            Some(refusal) if !refusal.is_temporary() => ApiError::storage(&refusal),
            _ => err,
        }
    });
    answer.unwrap_or_else(ApiError::into_response)
}

/// Serves HTTP until shutdown, then lets open requests finish.
pub async fn serve(listener: TcpListener, ctx: Arc<Ctx>, limits: Limits, mut shutdown: Shutdown) {
    let tracker = tokio_util::task::TaskTracker::new();
    let connections = Arc::new(Semaphore::new(limits.max_connections.clamp(1, Semaphore::MAX_PERMITS)));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let admission = Arc::new(Admission::new(&limits));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait() => break,
        };
        let (stream, peer): (_, SocketAddr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            api::bump(&ctx.metrics.refused_connections);
            match refusing.clone().try_acquire_owned() {
                Ok(refusal) => {
                    tracker.spawn(async move {
                        refuse_connection(stream).await;
                        drop(refusal);
                    });
                }
                Err(_) => tracing::debug!(%peer, "http connection closed unanswered: too many to refuse"),
            }
            continue;
        };
        let ctx = ctx.clone();
        let admission = admission.clone();
        let mut conn_shutdown = shutdown.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| handle(ctx.clone(), admission.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(30))
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "http connection ended");
                    }
                }
                _ = conn_shutdown.wait() => {
                    conn.as_mut().graceful_shutdown();
                    if tokio::time::timeout(std::time::Duration::from_secs(5), conn).await.is_err() {
                        tracing::warn!(%peer, "a request was still running 5 s after the shutdown; its connection is closed");
                    }
                }
            }
        });
    }
    tracker.close();
    tracker.wait().await;
}

/// A connection over the cap: its first request is answered 503
/// `overloaded` with `Connection: close`, and the connection is closed.
/// The request head is read first, so the client sees an ordinary answer
/// to what it sent; its body is not.
async fn refuse_connection(stream: tokio::net::TcpStream) {
    let service = hyper::service::service_fn(|_req: Request<Incoming>| async {
        let mut resp = ApiError::overloaded("too many connections; retry on a new connection").into_response();
        resp.headers_mut().insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("close"),
        );
        Ok::<_, Infallible>(resp)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(REFUSAL_HEAD_TIMEOUT)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "refused http connection ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_segments() {
        assert_eq!(percent_decode("%2B819012345678"), "+819012345678");
        assert_eq!(percent_decode("+819012345678"), "+819012345678");
        assert_eq!(percent_decode("e1%40example.org"), "e1@example.org");
        assert_eq!(percent_decode("bad%zz%"), "bad%zz%");
        assert_eq!(percent_decode("%あ%4"), "%あ%4");
    }

    #[test]
    fn health_metrics_and_long_polls_are_exempt_and_changes_are_metered() {
        let class = |method: Method, path: &str| {
            let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
            RequestClass::of(&method, &segments, false)
        };
        assert_eq!(class(Method::GET, "/healthz"), RequestClass::Exempt);
        assert_eq!(class(Method::GET, "/metrics"), RequestClass::Exempt);
        assert_eq!(class(Method::GET, "/v1/messages/M1/wait"), RequestClass::Exempt);
        assert_eq!(class(Method::GET, "/v1/messages/{id}/wait"), RequestClass::Exempt);
        assert_eq!(class(Method::GET, "/v1/messages/M1"), RequestClass::Counted);
        assert_eq!(class(Method::GET, "/"), RequestClass::Counted);
        let otp = ["v1", "sim", "handsets", "090", "otp"];
        assert_eq!(RequestClass::of(&Method::GET, &otp, true), RequestClass::Exempt);
        assert_eq!(RequestClass::of(&Method::GET, &otp, false), RequestClass::Counted);
        assert_eq!(
            RequestClass::of(&Method::DELETE, &["v1", "mail"], true),
            RequestClass::Metered
        );
        assert_eq!(class(Method::POST, "/v1/otps"), RequestClass::Metered);
        assert_eq!(class(Method::PUT, "/v1/sim/handsets/090"), RequestClass::Metered);
        assert_eq!(class(Method::DELETE, "/v1/mail"), RequestClass::Metered);
        assert_eq!(class(Method::POST, "/healthz"), RequestClass::Metered);
    }
}

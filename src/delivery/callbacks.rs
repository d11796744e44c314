//! Status callbacks: every delivery-log event, POSTed as JSON to one
//! configured URL (`callback_url`), so that a test suite can wait for
//! `delivered` without polling.
//!
//! The log calls [`Callbacks::observer`] after each event is durable; the
//! observer only writes the callback into a durable outbox tree and wakes the
//! sender, so it never slows the log down. [`Callbacks::run`] POSTs the
//! outbox in order, one at a time, over plain HTTP/1.1 with hyper's client,
//! deletes each entry once the receiver answered 2xx and retries everything
//! else with a short, capped back-off in real time (the receiver is a real
//! server, whatever the clock). The outbox lives in the store, so callbacks
//! not yet acknowledged are sent after a restart: delivery is at least once,
//! and a receiver that must not see an event twice keys on `event.id`.
//!
//! It must never block or fail a log write, never send a plain code (the
//! log's texts are masked, and the payload carries no text at all), and
//! never give up on an entry while it runs.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::clock::{rfc3339, Clock, Millis};
use crate::delivery::log::{Event, Message, Observer};
use crate::shutdown::Shutdown;
use crate::store::retention::Retention;
use crate::store::{Store, StoreError, Tree};

/// The first wait after a failed POST; it doubles up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long one connect and POST may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of a receiver's answer that is read (and thrown away).
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// How long a POST under way may still take once shutdown began, so that an
/// answered callback is not sent again after the restart.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// The most callbacks that wait for the receiver: past it the oldest are
/// dropped unsent, so that an outbox whose receiver went away (a test
/// suite that finished) does not grow with every event for ever.
pub const OUTBOX_KEPT: usize = 100_000;
/// How often, at most, dropped callbacks are told in the server's log.
const DROPS_TOLD_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    #[error("callback_url `{url}`: {reason}")]
    Url { url: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where callbacks go: an `http://host[:port][/path]` URL, read once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `host` or `host:port` as written, for the Host header.
    authority: String,
    host: String,
    port: u16,
    /// The path and query, at least `/`.
    path: String,
}

impl Target {
    /// Parses `http://host[:port][/path][?query]`. Only plain HTTP: the
    /// receivers are test suites on the same machine or network.
    pub fn parse(url: &str) -> Result<Target, CallbackError> {
        let refuse = |reason: &str| CallbackError::Url {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let rest = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some(_) => return Err(refuse("only http:// URLs are supported")),
            None => return Err(refuse("expected http://host:port/path")),
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, "/"),
        };
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_string()
        };
        if authority.contains('@') {
            return Err(refuse("credentials in the URL are not supported"));
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            // An IPv6 literal: [::1]:8080
            let (host, after) = bracketed.split_once(']').ok_or_else(|| refuse("unclosed `[`"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| refuse("the port is not a number"))?,
                None if after.is_empty() => 80,
                None => return Err(refuse("unexpected text after `]`")),
            };
            (host.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((host, p)) => (
                    host.to_string(),
                    p.parse().map_err(|_| refuse("the port is not a number"))?,
                ),
                None => (authority.to_string(), 80),
            }
        };
        if host.is_empty() {
            return Err(refuse("no host"));
        }
        if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(refuse("the path has spaces or control characters"));
        }
        Ok(Target {
            authority: authority.to_string(),
            host,
            port,
            path,
        })
    }
}

/// One callback waiting in the outbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Queued {
    /// When the event was queued, by the server's clock.
    queued_at: Millis,
    /// The JSON body, exactly as it will be sent.
    payload: Value,
}

/// The outbox and its sender. Cheap to clone; clones share the outbox.
#[derive(Clone)]
pub struct Callbacks {
    store: Store,
    /// `{sequence:020}` → [`Queued`]; key order is the order events happened.
    outbox: Tree,
    clock: Arc<Clock>,
    target: Target,
    wake: Arc<Notify>,
    /// At most [`OUTBOX_KEPT`] wait.
    retention: Arc<Retention>,
    /// Callbacks dropped unsent since the last time the log told, and when
    /// it last did.
    dropped: Arc<std::sync::Mutex<(usize, Option<std::time::Instant>)>>,
}

impl std::fmt::Debug for Callbacks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Callbacks")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// The body of one callback: the message as it stands after the event, and
/// the event with its protocol detail (times in RFC 3339, Japan time).
pub fn payload(message: &Message, event: &Event) -> Value {
    let mut detail = serde_json::to_value(event).unwrap_or_else(|_| json!({}));
    if let Some(fields) = detail.as_object_mut() {
        fields.insert("at".into(), json!(rfc3339(event.at)));
        if let Some(next) = event.next_attempt_at {
            fields.insert("next_attempt_at".into(), json!(rfc3339(next)));
        }
    }
    json!({
        "message_id": message.id,
        "otp_id": message.otp_id,
        "member_id": message.member_id,
        "channel": message.channel.as_str(),
        "to": message.to,
        "state": message.state.as_str(),
        "event": detail,
    })
}

impl Callbacks {
    /// Opens the outbox in `store` for callbacks to `url`; whatever a
    /// previous run left unsent is sent first.
    pub fn open(store: &Store, clock: Arc<Clock>, url: String) -> Result<Callbacks, CallbackError> {
        let target = Target::parse(&url)?;
        let outbox = store.tree("callback_outbox")?;
        let callbacks = Callbacks {
            store: store.clone(),
            retention: Arc::new(Retention::new(OUTBOX_KEPT, outbox.len())),
            outbox,
            clock,
            target,
            wake: Arc::new(Notify::new()),
            dropped: Arc::default(),
        };
        if !callbacks.outbox.is_empty() {
            tracing::info!(
                waiting = callbacks.outbox.len(),
                "status callbacks left from the last run"
            );
        }
        Ok(callbacks)
    }

    /// What [`crate::delivery::log::DeliveryLog::observe`] takes: queues
    /// each event and wakes the sender. A storage error is logged; the log
    /// write it follows has already succeeded and stands.
    pub fn observer(&self) -> Observer {
        let callbacks = self.clone();
        Arc::new(move |message: &Message, event: &Event| {
            if let Err(error) = callbacks.enqueue(message, event) {
                tracing::error!(message_id = %message.id, event = %event.id, %error, "status callback not queued");
            }
        })
    }

    fn enqueue(&self, message: &Message, event: &Event) -> Result<(), StoreError> {
        let entry = Queued {
            queued_at: self.clock.now(),
            payload: payload(message, event),
        };
        // Ids only grow, also across restarts, so key order is queue order.
        let key = format!("{:020}", self.store.next_id()?);
        self.outbox.put(&key, &entry)?;
        self.retention.added();
        self.drop_oldest();
        self.wake.notify_one();
        Ok(())
    }

    /// Drops the oldest callbacks past [`OUTBOX_KEPT`], unsent, and says so
    /// in the server's log (every [`DROPS_TOLD_EVERY`] at most).
    fn drop_oldest(&self) {
        let mut dropped = 0;
        self.retention
            .remove_oldest("status callbacks", &self.store, &self.outbox, |key, batch| {
                batch.remove(&self.outbox, key);
                dropped += 1;
                Ok(Some(()))
            });
        if dropped == 0 {
            return;
        }
        let mut told = self.dropped.lock().unwrap_or_else(|e| e.into_inner());
        told.0 += dropped;
        let now = std::time::Instant::now();
        if told.1.is_none_or(|at| now.duration_since(at) >= DROPS_TOLD_EVERY) {
            tracing::warn!(
                dropped = told.0,
                kept = OUTBOX_KEPT,
                "status callbacks dropped unsent: the receiver has not taken the older ones"
            );
            *told = (0, Some(now));
        }
    }

    /// Keeps at most `callbacks` waiting from now on.
    #[cfg(test)]
    fn keep(&self, callbacks: usize) {
        self.retention.keep(callbacks);
    }

    /// How many callbacks wait to be acknowledged.
    pub fn waiting(&self) -> usize {
        self.outbox.len()
    }

    /// Sends the outbox in order until `shutdown`; an entry leaves the
    /// outbox only when the receiver answered 2xx.
    pub async fn run(self, mut shutdown: Shutdown) {
        tracing::info!(target = %self.target.authority, path = %self.target.path, "status callbacks on");
        let mut link: Option<SendRequest<Full<Bytes>>> = None;
        let mut backoff = BACKOFF_MIN;
        loop {
            if shutdown.is_fired() {
                return;
            }
            // Armed before the outbox is read, so an event queued in between still wakes us.
            let woken = self.wake.notified();
            let next = match self.first() {
                Ok(next) => next,
                Err(error) => {
                    tracing::error!(%error, "reading the callback outbox");
                    None
                }
            };
            let Some((key, entry)) = next else {
                tokio::select! {
                    _ = woken => continue,
                    _ = shutdown.wait() => return,
                }
            };
            // The receiver never sees an entry that a crash could still lose.
            let mut stopping = shutdown.clone();
            let sent = tokio::select! {
                sent = async {
                    self.store.flush().await.map_err(|e| e.to_string())?;
                    self.post(&mut link, &entry.payload).await
                } => sent,
                _ = async {
                    stopping.wait().await;
                    tokio::time::sleep(SHUTDOWN_GRACE).await;
                } => return,
            };
            let failure = match sent {
                Ok(status) if (200..300).contains(&status) => {
                    match self.outbox.remove(&key) {
                        Ok(()) => self.retention.removed(),
                        Err(error) => tracing::error!(%error, "removing a sent status callback"),
                    }
                    backoff = BACKOFF_MIN;
                    continue;
                }
                Ok(status) => format!("answered {status}"),
                Err(reason) => {
                    link = None;
                    reason
                }
            };
            tracing::warn!(
                event = %entry.payload["event"]["id"],
                failure,
                retry_in = ?backoff,
                "status callback not accepted"
            );
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.wait() => return,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    fn first(&self) -> Result<Option<(String, Queued)>, StoreError> {
        let Some(key) = self.outbox.first_key()? else {
            return Ok(None);
        };
        Ok(self.outbox.get::<Queued>(&key)?.map(|entry| (key, entry)))
    }

    /// One POST, on the kept connection or a new one; answers the status.
    async fn post(&self, link: &mut Option<SendRequest<Full<Bytes>>>, payload: &Value) -> Result<u16, String> {
        let body = serde_json::to_vec(payload).map_err(|e| e.to_string())?;
        let attempt = async {
            if link.as_ref().is_none_or(|sender| sender.is_closed()) {
                *link = Some(self.connect().await?);
            }
            let sender = link.as_mut().ok_or("no connection")?;
            sender.ready().await.map_err(|e| format!("connection: {e}"))?;
            let request = hyper::Request::post(self.target.path.as_str())
                .header(hyper::header::HOST, self.target.authority.as_str())
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .header(hyper::header::USER_AGENT, "otpgate")
                .body(Full::new(Bytes::from(body)))
                .map_err(|e| e.to_string())?;
            let answer = sender
                .send_request(request)
                .await
                .map_err(|e| format!("request: {e}"))?;
            let status = answer.status().as_u16();
            // Read the answer to its end so the connection can carry the next POST.
            if Limited::new(answer.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .is_err()
            {
                *link = None;
            }
            Ok::<u16, String>(status)
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, attempt).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {REQUEST_TIMEOUT:?}")),
        }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        let stream = TcpStream::connect((self.target.host.as_str(), self.target.port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "status callback connection ended");
            }
        });
        Ok(sender)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    use super::*;
    use crate::clock::DEFAULT_VIRTUAL_START;
    use crate::delivery::log::{DeliveryLog, NewMessage, State};
    use crate::member::Channel;

    const WAIT: Duration = Duration::from_secs(10);

    /// A receiver on 127.0.0.1:0 that answers 500 to the first `failures`
    /// POSTs and 200 after, and reports every body with its answer.
    async fn receiver(failures: usize) -> (String, mpsc::UnboundedReceiver<(u16, Value)>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks/otp?suite=1", listener.local_addr().unwrap());
        let (tx, rx) = mpsc::unbounded_channel();
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (tx, seen) = (tx.clone(), seen.clone());
                let service = service_fn(move |request: hyper::Request<Incoming>| {
                    let (tx, seen) = (tx.clone(), seen.clone());
                    async move {
                        assert_eq!(request.method(), hyper::Method::POST);
                        assert_eq!(request.uri(), "/hooks/otp?suite=1");
                        let bytes = request.into_body().collect().await.unwrap().to_bytes();
                        let n = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let status = if n < failures { 500 } else { 200 };
                        let _ = tx.send((status, serde_json::from_slice(&bytes).unwrap()));
                        let answer = hyper::Response::builder()
                            .status(status)
                            .body(Full::new(Bytes::from_static(b"ok")))
                            .unwrap();
                        Ok::<_, Infallible>(answer)
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (url, rx)
    }

    async fn next(rx: &mut mpsc::UnboundedReceiver<(u16, Value)>) -> (u16, Value) {
        tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("a callback in time")
            .expect("receiver running")
    }

    fn new_message() -> NewMessage {
        NewMessage {
            channel: Channel::Sms,
            to: "+819011110001".into(),
            from: "03-5460-0124".into(),
            origin: "otpgate".into(),
            member_id: Some("M1".into()),
            otp_id: Some("otp-1".into()),
            text: "code ******".into(),
            carrier: Some("docomo".into()),
            at: DEFAULT_VIRTUAL_START,
        }
    }

    /// Logs a message with three events; answers its id.
    async fn three_events(log: &DeliveryLog) -> String {
        let queued = Event::new("queued", DEFAULT_VIRTUAL_START).state(State::Queued);
        let message = log.create(new_message(), queued).await.unwrap();
        let mut submitted = Event::new("submitted", DEFAULT_VIRTUAL_START + 10).state(State::Submitted);
        submitted.smsc_message_id = Some("0000000042".into());
        log.append(&message.id, submitted).await.unwrap();
        let mut delivered = Event::new("delivered", DEFAULT_VIRTUAL_START + 2_000).state(State::Delivered);
        delivered.stat = Some("DELIVRD".into());
        delivered.err = Some("000".into());
        log.append(&message.id, delivered).await.unwrap();
        message.id
    }

    #[test]
    fn urls_are_read_once_and_only_http() {
        let t = Target::parse("http://127.0.0.1:9000/hooks?x=1").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("127.0.0.1", 9000, "/hooks?x=1")
        );
        let t = Target::parse("http://localhost").unwrap();
        assert_eq!((t.authority.as_str(), t.port, t.path.as_str()), ("localhost", 80, "/"));
        let t = Target::parse("http://[::1]:8080?a").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.path.as_str()), ("::1", 8080, "/?a"));
        for bad in [
            "https://example.com/",
            "example.com/x",
            "http://:80/",
            "http://h:port/",
            "http://u@h/",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    /// With no receiver taking them, at most the cap of callbacks wait:
    /// the oldest are dropped, the newest kept in order.
    #[tokio::test]
    async fn callbacks_nobody_takes_wait_up_to_the_cap_and_the_oldest_go() {
        let store = Store::temporary().unwrap();
        let log = DeliveryLog::open(&store).unwrap();
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let url = format!("http://{closed}/hooks");
        let callbacks = Callbacks::open(&store, Clock::virtual_at(DEFAULT_VIRTUAL_START), url).unwrap();
        callbacks.keep(4);
        log.observe(callbacks.observer());
        for _ in 0..3 {
            three_events(&log).await;
        }
        assert_eq!(callbacks.waiting(), 4);
        let kinds: Vec<String> = callbacks
            .outbox
            .scan_prefix::<Queued>("")
            .unwrap()
            .into_iter()
            .map(|(_, q)| q.payload["event"]["kind"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            kinds,
            ["delivered", "queued", "submitted", "delivered"],
            "the newest, in order"
        );
    }

    #[tokio::test]
    async fn every_event_is_posted_in_order_and_a_500_is_retried() {
        let (url, mut posts) = receiver(1).await;
        let store = Store::temporary().unwrap();
        let log = DeliveryLog::open(&store).unwrap();
        let callbacks = Callbacks::open(&store, Clock::virtual_at(DEFAULT_VIRTUAL_START), url).unwrap();
        log.observe(callbacks.observer());
        let (trigger, shutdown) = crate::shutdown::channel();
        let sender = tokio::spawn(callbacks.clone().run(shutdown));

        let id = three_events(&log).await;
        let (status, first) = next(&mut posts).await;
        assert_eq!(status, 500);
        let mut accepted = Vec::new();
        while accepted.len() < 3 {
            let (status, body) = next(&mut posts).await;
            assert_eq!(status, 200);
            accepted.push(body);
        }
        assert_eq!(accepted[0], first, "the refused callback is sent again, first");
        let kinds: Vec<&str> = accepted.iter().map(|b| b["event"]["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["queued", "submitted", "delivered"]);
        let states: Vec<&str> = accepted.iter().map(|b| b["state"].as_str().unwrap()).collect();
        assert_eq!(states, ["queued", "submitted", "delivered"]);
        let last = &accepted[2];
        assert_eq!(last["message_id"], id.as_str());
        assert_eq!(last["otp_id"], "otp-1");
        assert_eq!(last["member_id"], "M1");
        assert_eq!(last["channel"], "sms");
        assert_eq!(last["to"], "+819011110001");
        assert_eq!(last["event"]["id"], format!("{id}.3").as_str());
        assert_eq!(last["event"]["at"], "2026-01-01T00:00:02+09:00");
        assert_eq!(last["event"]["stat"], "DELIVRD");
        assert_eq!(accepted[1]["event"]["smsc_message_id"], "0000000042");

        trigger.fire();
        tokio::time::timeout(WAIT, sender).await.unwrap().unwrap();
        assert_eq!(callbacks.waiting(), 0, "acknowledged callbacks leave the outbox");
    }

    #[tokio::test]
    async fn unsent_callbacks_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        // No receiver yet: the port refuses connections.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead_url = format!("http://{}/", closed.local_addr().unwrap());
        drop(closed);
        let id = {
            let store = Store::open(dir.path()).unwrap();
            let log = DeliveryLog::open(&store).unwrap();
            let callbacks = Callbacks::open(&store, Clock::virtual_at(DEFAULT_VIRTUAL_START), dead_url).unwrap();
            log.observe(callbacks.observer());
            let (trigger, shutdown) = crate::shutdown::channel();
            let sender = tokio::spawn(callbacks.clone().run(shutdown));
            let id = three_events(&log).await;
            trigger.fire();
            tokio::time::timeout(WAIT, sender).await.unwrap().unwrap();
            assert_eq!(callbacks.waiting(), 3);
            store.flush().await.unwrap();
            id
        };

        let (url, mut posts) = receiver(0).await;
        let store = Store::open(dir.path()).unwrap();
        let callbacks = Callbacks::open(&store, Clock::virtual_at(DEFAULT_VIRTUAL_START), url).unwrap();
        let (trigger, shutdown) = crate::shutdown::channel();
        let sender = tokio::spawn(callbacks.clone().run(shutdown));
        for n in 1..=3 {
            let (status, body) = next(&mut posts).await;
            assert_eq!(status, 200);
            assert_eq!(body["event"]["id"], format!("{id}.{n}").as_str());
        }
        trigger.fire();
        tokio::time::timeout(WAIT, sender).await.unwrap().unwrap();
        assert_eq!(callbacks.waiting(), 0);
    }
}

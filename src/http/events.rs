//! `GET /v1/events`: the delivery log as it happens, as server-sent events
//! (`text/event-stream`), for a QA team watching its own application's
//! traffic (`?origin=` its system_id), an agent watching one member try
//! again (`?member_id=`, `?to=`), or a dashboard.
//!
//! Live only: an event goes to the streams open when it becomes durable
//! (the delivery log's observers are told after the sync), in the order
//! the log wrote it. A stream that falls more than [`BUFFER`] events behind
//! is told how many it missed (`event: lagged`) and goes on; `/v1/messages`
//! has everything. With no stream open an event costs one atomic load; the
//! JSON is written once per event, whatever the number of streams.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use http_body_util::StreamBody;
use hyper::body::Frame;
use tokio::sync::broadcast;

use crate::delivery::log::{Event, Message, Observer};
use crate::member::Channel;
use crate::shutdown::Shutdown;

/// How far a stream may fall behind before it is told it missed events.
const BUFFER: usize = 1024;

/// At most this many streams are open at once; the next is refused (503).
pub const MOST_STREAMS: usize = 64;

/// A comment line this often, so that a proxy keeps the stream open and
/// a client that went away is found out.
const HEARTBEAT: Duration = Duration::from_secs(15);

pub type StreamingBody = StreamBody<BoxStream<'static, Result<Frame<Bytes>, Infallible>>>;

/// One event as every stream may send it.
struct Sent {
    channel: Channel,
    to: String,
    member_id: Option<String>,
    origin: String,
    /// The whole `id:`/`event:`/`data:` block.
    frame: Bytes,
}

/// What a stream sends: every event, or those of one channel, destination,
/// member or origin.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub channel: Option<Channel>,
    /// E.164 or a normalized address.
    pub to: Option<String>,
    pub member_id: Option<String>,
    /// `otpgate` for the OTP core, an ESME's system_id, or `smtp`.
    pub origin: Option<String>,
}

impl Filter {
    fn keeps(&self, sent: &Sent) -> bool {
        self.channel.is_none_or(|c| c == sent.channel)
            && self.to.as_ref().is_none_or(|to| *to == sent.to)
            && self
                .member_id
                .as_ref()
                .is_none_or(|m| sent.member_id.as_ref() == Some(m))
            && self.origin.as_ref().is_none_or(|o| *o == sent.origin)
    }
}

#[derive(Clone)]
pub struct EventHub {
    inner: Arc<Inner>,
}

struct Inner {
    tx: broadcast::Sender<Arc<Sent>>,
    streams: AtomicUsize,
}

impl Default for EventHub {
    fn default() -> Self {
        EventHub::new()
    }
}

impl EventHub {
    pub fn new() -> EventHub {
        EventHub {
            inner: Arc::new(Inner {
                tx: broadcast::channel(BUFFER).0,
                streams: AtomicUsize::new(0),
            }),
        }
    }

    /// The delivery log's observer that feeds the streams.
    pub fn observer(&self) -> Observer {
        let hub = self.clone();
        Arc::new(move |message, event| hub.publish(message, event))
    }

    /// Streams open now (`/metrics`).
    pub fn streams(&self) -> usize {
        self.inner.streams.load(Ordering::Relaxed)
    }

    fn publish(&self, message: &Message, event: &Event) {
        if self.streams() == 0 {
            return;
        }
        let data = super::api::event_json(message, event);
        let frame = format!("id: {}\nevent: delivery\ndata: {data}\n\n", message.id);
        // No receiver between the check and the send: nobody to tell.
        let _ = self.inner.tx.send(Arc::new(Sent {
            channel: message.channel,
            to: message.to.clone(),
            member_id: message.member_id.clone(),
            origin: message.origin.clone(),
            frame: Bytes::from(frame),
        }));
    }

    /// A new stream of the events `filter` keeps, until the client goes
    /// away or the server stops; `None` when [`MOST_STREAMS`] are open.
    pub fn open(&self, filter: Filter, shutdown: Shutdown) -> Option<StreamingBody> {
        let open = self.inner.streams.fetch_add(1, Ordering::AcqRel);
        let guard = Open(self.inner.clone());
        if open >= MOST_STREAMS {
            return None;
        }
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let state = Stream {
            rx: self.inner.tx.subscribe(),
            filter,
            shutdown,
            heartbeat,
            _open: guard,
            started: false,
        };
        let frames = futures::stream::unfold(state, |mut s| async move {
            let frame = s.next().await?;
            Some((Ok(Frame::data(frame)), s))
        });
        Some(StreamBody::new(Box::pin(frames)))
    }
}

/// Counts an open stream until it is dropped (the client went away, the
/// server stopped, or it was refused).
struct Open(Arc<Inner>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::AcqRel);
    }
}

struct Stream {
    rx: broadcast::Receiver<Arc<Sent>>,
    filter: Filter,
    shutdown: Shutdown,
    heartbeat: tokio::time::Interval,
    _open: Open,
    started: bool,
}

impl Stream {
    /// The next block to write; `None` ends the stream.
    async fn next(&mut self) -> Option<Bytes> {
        if !self.started {
            // At once, so the client knows it is connected, and the
            // interval's first tick (which is immediate) is spent.
            self.started = true;
            self.heartbeat.tick().await;
            return Some(Bytes::from_static(b"retry: 3000\n: otpgate delivery events\n\n"));
        }
        loop {
            tokio::select! {
                _ = self.shutdown.wait() => return None,
                _ = self.heartbeat.tick() => return Some(Bytes::from_static(b": keep-alive\n\n")),
                received = self.rx.recv() => match received {
                    Ok(sent) if self.filter.keeps(&sent) => return Some(sent.frame.clone()),
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        let frame = format!("event: lagged\ndata: {{\"missed\":{missed}}}\n\n");
                        return Some(Bytes::from(frame));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            }
        }
    }
}

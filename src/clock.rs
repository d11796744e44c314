//! Time for the whole server: the system clock or a virtual one, and the
//! scheduler that runs what falls due in time order.
//!
//! Nothing else reads the system time. Under `--virtual-clock` time stands
//! still until `advance` moves it, and every job that falls due on the way is
//! run in order of its due time before `advance` returns, so tests are exact
//! and need no sleeps.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, FixedOffset, SecondsFormat, TimeZone, Utc};

/// Milliseconds since the Unix epoch, UTC. The one time type inside otpgate.
pub type Millis = i64;

/// 2026-01-01T00:00:00+09:00, where a virtual clock starts by default.
pub const DEFAULT_VIRTUAL_START: Millis = 1_767_193_200_000;

/// Japan time, in which receipts and answers show dates.
pub fn jst() -> FixedOffset {
    FixedOffset::east_opt(9 * 3600).expect("+09:00 is a valid offset")
}

/// RFC 3339 in Japan time, to the millisecond when it has one.
pub fn rfc3339(at: Millis) -> String {
    let dt = jst()
        .timestamp_millis_opt(at)
        .single()
        .unwrap_or_else(|| jst().timestamp_millis_opt(0).single().expect("epoch is representable"));
    // Not `format` with a pattern: that parses the pattern on every call,
    // which showed in the verify profile.
    let seconds = if at % 1000 == 0 {
        SecondsFormat::Secs
    } else {
        SecondsFormat::Millis
    };
    dt.to_rfc3339_opts(seconds, false)
}

/// Parses an RFC 3339 date into milliseconds.
/// A span of time to list things in: `since` included, `until` not;
/// either end open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    pub since: Option<Millis>,
    pub until: Option<Millis>,
}

impl Window {
    pub fn holds(&self, at: Millis) -> bool {
        !self.is_before(at) && self.until.is_none_or(|until| at < until)
    }

    /// Before the window: a list read newest first stops here.
    pub fn is_before(&self, at: Millis) -> bool {
        self.since.is_some_and(|since| at < since)
    }
}

pub fn parse_rfc3339(text: &str) -> Option<Millis> {
    DateTime::parse_from_rfc3339(text.trim())
        .ok()
        .map(|dt| dt.timestamp_millis())
}

/// The SMPP receipt date format `YYMMDDhhmm` in Japan time.
pub fn receipt_date(at: Millis) -> String {
    match jst().timestamp_millis_opt(at).single() {
        Some(dt) => dt.format("%y%m%d%H%M").to_string(),
        None => "0001010000".to_string(),
    }
}

/// A job the scheduler runs when its time comes.
pub type Job = Box<dyn FnOnce(Millis) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// The clock and scheduler, shared by every part of the server.
pub struct Clock {
    virtual_mode: bool,
    /// The virtual now; unused by the system clock.
    now: AtomicI64,
    seq: AtomicU64,
    queue: Mutex<Queue>,
    wake: tokio::sync::Notify,
    /// Serialises `advance` calls so that two advances never interleave jobs.
    advancing: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Queue {
    heap: BinaryHeap<Reverse<(Millis, u64)>>,
    jobs: HashMap<u64, Job>,
}

impl Clock {
    pub fn system() -> Arc<Clock> {
        Arc::new(Clock::new(false, 0))
    }

    pub fn virtual_at(start: Millis) -> Arc<Clock> {
        Arc::new(Clock::new(true, start))
    }

    fn new(virtual_mode: bool, start: Millis) -> Clock {
        Clock {
            virtual_mode,
            now: AtomicI64::new(start),
            seq: AtomicU64::new(0),
            queue: Mutex::new(Queue::default()),
            wake: tokio::sync::Notify::new(),
            advancing: tokio::sync::Mutex::new(()),
        }
    }

    pub fn is_virtual(&self) -> bool {
        self.virtual_mode
    }

    pub fn now(&self) -> Millis {
        if self.virtual_mode {
            self.now.load(Ordering::SeqCst)
        } else {
            Utc::now().timestamp_millis()
        }
    }

    /// Runs `job` at `at` (or at once, on the next tick, if `at` has passed).
    pub fn schedule(&self, at: Millis, job: Job) {
        let id = self.seq.fetch_add(1, Ordering::SeqCst);
        {
            let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            queue.heap.push(Reverse((at, id)));
            queue.jobs.insert(id, job);
        }
        self.wake.notify_one();
    }

    /// The earliest job due at or before `limit`, removed from the queue.
    fn pop_due(&self, limit: Millis) -> Option<(Millis, Job)> {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let Reverse((at, id)) = *queue.heap.peek()?;
        if at > limit {
            return None;
        }
        queue.heap.pop();
        queue.jobs.remove(&id).map(|job| (at, job))
    }

    fn next_due(&self) -> Option<Millis> {
        let queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        queue.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Moves a virtual clock forward by `millis`, running every job that
    /// falls due on the way in time order. Returns the new now.
    pub async fn advance(&self, millis: Millis) -> Millis {
        let _one_at_a_time = self.advancing.lock().await;
        let target = self.now().saturating_add(millis.max(0));
        // Jobs already due (scheduled "now") run first, then the clock steps
        // from one due time to the next.
        while let Some((at, job)) = self.pop_due(target) {
            if at > self.now.load(Ordering::SeqCst) {
                self.now.store(at, Ordering::SeqCst);
            }
            job(at.max(self.now())).await;
        }
        self.now.store(target, Ordering::SeqCst);
        target
    }

    /// Runs due jobs until shutdown. Under the virtual clock only jobs due
    /// "now" run here (scheduled for immediate work); the rest wait for an
    /// advance.
    ///
    /// Under the system clock due jobs run side by side, each in its own
    /// task: one job waiting on I/O (a delivery attempt flushing the store,
    /// then waiting for its receipt to be recorded) must not hold up every
    /// other delivery due at the same time. At shutdown the running jobs get
    /// a few seconds to finish.
    pub async fn run(self: Arc<Self>, mut shutdown: crate::shutdown::Shutdown) {
        let running = tokio_util::task::TaskTracker::new();
        loop {
            let now = self.now();
            if self.virtual_mode {
                let _one_at_a_time = self.advancing.lock().await;
                while let Some((at, job)) = self.pop_due(now) {
                    job(at.max(self.now())).await;
                }
            } else {
                while let Some((_, job)) = self.pop_due(self.now()) {
                    running.spawn(job(self.now()));
                }
            }
            let wait = match self.next_due() {
                Some(at) if !self.virtual_mode => {
                    std::time::Duration::from_millis((at - self.now()).clamp(0, 60_000) as u64)
                }
                _ => std::time::Duration::from_secs(60),
            };
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.wait() => break,
            }
        }
        running.close();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), running.wait()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_in_japan_time() {
        assert_eq!(rfc3339(DEFAULT_VIRTUAL_START), "2026-01-01T00:00:00+09:00");
        assert_eq!(
            rfc3339(DEFAULT_VIRTUAL_START + 1_234_567),
            "2026-01-01T00:20:34.567+09:00"
        );
        assert_eq!(
            rfc3339(DEFAULT_VIRTUAL_START + 1_000_050),
            "2026-01-01T00:16:40.050+09:00"
        );
        assert_eq!(receipt_date(DEFAULT_VIRTUAL_START), "2601010000");
        assert_eq!(parse_rfc3339("2026-01-01T00:00:00+09:00"), Some(DEFAULT_VIRTUAL_START));
    }

    #[tokio::test]
    async fn advance_runs_jobs_in_time_order() {
        let clock = Clock::virtual_at(0);
        let seen = Arc::new(Mutex::new(Vec::new()));
        for at in [300, 100, 200] {
            let seen = seen.clone();
            clock.schedule(
                at,
                Box::new(move |now| {
                    Box::pin(async move {
                        seen.lock().unwrap().push((at, now));
                    })
                }),
            );
        }
        assert_eq!(clock.advance(250).await, 250);
        assert_eq!(*seen.lock().unwrap(), vec![(100, 100), (200, 200)]);
        clock.advance(100).await;
        assert_eq!(seen.lock().unwrap().len(), 3);
    }
}

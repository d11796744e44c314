//! Admission control's arithmetic: token buckets that say at once whether
//! one more request, message or submission may come in. The SMSC keeps one
//! bucket per account ([`Throttle`], `throughput_per_sec`), the HTTP API
//! and the SMTP server one each ([`RateLimit`], `max_requests_per_sec` and
//! `max_messages_per_sec`). Each protocol turns a "no" into its own answer
//! (ESME_RTHROTTLED, HTTP 429, SMTP 451).
//!
//! A [`Backlog`] needs no number from the operator: it watches how long the
//! server takes to finish work it has admitted, and says no while even the
//! quickest of the last tenth of a second took longer than its target (a
//! queue that does not drain, the test of CoDel, RFC 8289). The SMTP server
//! uses it by default, so that a server pushed past what it can do refuses
//! new transactions at once instead of letting every one of them wait.
//!
//! A bucket refills at its rate over real (monotonic) time and holds at
//! most one second's worth, so a client may burst up to the rate and is
//! then refused until tokens come back. It takes the time as an argument
//! and does no I/O, so it is tested without waiting; it never blocks, it
//! only says yes or no. It never reads the simulation's [`crate::clock::Clock`]:
//! under `--virtual-clock` that stands still, and a bucket would never
//! refill.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

/// One bucket: `per_sec` tokens a second, at most `per_sec` held.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    per_sec: f64,
    tokens: f64,
    /// When the bucket was last refilled; `None` until it is first asked,
    /// when it is full.
    last: Option<Instant>,
}

impl TokenBucket {
    /// A full bucket. `per_sec` is at least 1.
    pub fn new(per_sec: u32) -> TokenBucket {
        let per_sec = f64::from(per_sec.max(1));
        TokenBucket {
            per_sec,
            tokens: per_sec,
            last: None,
        }
    }

    /// Takes a token if there is one at `now`.
    pub fn take(&mut self, now: Instant) -> bool {
        self.take_many(now, 1)
    }

    /// Takes `n` tokens if there are that many at `now`. More than a full
    /// bucket holds are taken from a full one, the rest owed: the bucket
    /// stays below zero until they are paid back, so a burst larger than
    /// the rate still costs its whole share of time.
    pub fn take_many(&mut self, now: Instant, n: u32) -> bool {
        if let Some(last) = self.last {
            let elapsed = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.per_sec).min(self.per_sec);
        }
        self.last = Some(now);
        let n = f64::from(n.max(1));
        if self.tokens >= n.min(self.per_sec) {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// One bucket shared by every connection of a server, or no limit at all.
#[derive(Debug)]
pub struct RateLimit {
    bucket: Option<Mutex<TokenBucket>>,
}

impl RateLimit {
    /// `None` or `Some(0)` means no limit.
    pub fn new(per_sec: Option<u32>) -> RateLimit {
        RateLimit {
            bucket: per_sec.filter(|&r| r > 0).map(|r| Mutex::new(TokenBucket::new(r))),
        }
    }

    /// Takes a token for one request at `now`; always yes without a limit.
    pub fn admit(&self, now: Instant) -> bool {
        match &self.bucket {
            None => true,
            Some(bucket) => lock(bucket).take(now),
        }
    }
}

/// The buckets of every SMPP account that has a limit.
#[derive(Default)]
pub struct Throttle {
    buckets: Mutex<HashMap<String, TokenBucket>>,
}

impl Throttle {
    /// Takes a token for each of the `messages` one submit of `system_id`
    /// makes (a `submit_multi`'s destinations; 1 otherwise). `None` or
    /// `Some(0)` means the account has no limit.
    pub fn admit(&self, system_id: &str, per_sec: Option<u32>, now: Instant, messages: u32) -> bool {
        let rate = match per_sec {
            None | Some(0) => return true,
            Some(rate) => rate,
        };
        lock(&self.buckets)
            .entry(system_id.to_string())
            .or_insert_with(|| TokenBucket::new(rate))
            .take_many(now, messages)
    }
}

/// How long a [`Backlog`] watches before it decides again.
const BACKLOG_WINDOW: Duration = Duration::from_millis(100);
/// Fewer finished in a window than this and the window says nothing: one
/// slow message on an idle server is not a queue.
const BACKLOG_MIN_SAMPLES: u32 = 8;

/// Load shedding on the time admitted work takes. Each finished unit of
/// work reports how long the server took over it ([`Backlog::finished`]);
/// when, in a window of 100 ms with enough of them, even the quickest
/// took longer than the target, work is waiting in a queue that does not
/// drain, and [`Backlog::admit`] says no for the next window. The work
/// already admitted finishes meanwhile; a window whose quickest is under
/// the target, or one in which nothing finished, admits again. Clients
/// that stall cost no server time and do not count, unlike a cap on work
/// in progress.
#[derive(Debug)]
pub struct Backlog {
    target: Option<Duration>,
    state: Mutex<BacklogState>,
}

#[derive(Debug, Default)]
struct BacklogState {
    window_start: Option<Instant>,
    quickest: Option<Duration>,
    samples: u32,
    shedding: bool,
}

impl Backlog {
    /// `None` or a zero target: never refuses.
    pub fn new(target: Option<Duration>) -> Backlog {
        Backlog {
            target: target.filter(|t| !t.is_zero()),
            state: Mutex::default(),
        }
    }

    /// One unit of admitted work finished at `now`, after `took` of the
    /// server's time.
    pub fn finished(&self, took: Duration, now: Instant) {
        let Some(target) = self.target else { return };
        let mut state = lock(&self.state);
        state.roll(now, target);
        state.quickest = Some(state.quickest.map_or(took, |q| q.min(took)));
        state.samples += 1;
    }

    /// Whether new work may come in at `now`.
    pub fn admit(&self, now: Instant) -> bool {
        let Some(target) = self.target else { return true };
        let mut state = lock(&self.state);
        state.roll(now, target);
        !state.shedding
    }
}

impl BacklogState {
    /// Closes the window once it is over: it decides the next one. A
    /// window that ended more than a window ago saw nothing after it, so
    /// the server is idle and admits.
    fn roll(&mut self, now: Instant, target: Duration) {
        let start = *self.window_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed < BACKLOG_WINDOW {
            return;
        }
        let standing = self.samples >= BACKLOG_MIN_SAMPLES && self.quickest.is_some_and(|q| q > target);
        self.shedding = standing && elapsed < 2 * BACKLOG_WINDOW;
        self.window_start = Some(now);
        self.quickest = None;
        self.samples = 0;
    }
}

/// Where a server's admission control reads the time: tokio's monotonic
/// clock, or, in tests, one that moves only when told to, so a refill is
/// tested without waiting a second.
#[derive(Debug, Clone, Default)]
pub struct Ticker {
    manual: Option<Arc<Mutex<Instant>>>,
}

impl Ticker {
    /// A clock that stands still until [`Ticker::advance`].
    pub fn manual() -> Ticker {
        Ticker {
            manual: Some(Arc::new(Mutex::new(Instant::now()))),
        }
    }

    pub fn now(&self) -> Instant {
        match &self.manual {
            None => Instant::now(),
            Some(at) => *lock(at),
        }
    }

    /// Moves a manual clock forward; a real one moves by itself.
    pub fn advance(&self, by: Duration) {
        if let Some(at) = &self.manual {
            *lock(at) += by;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_up_to_the_rate_then_refills() {
        let throttle = Throttle::default();
        let t0 = Instant::now();
        let admitted = (0..5).filter(|_| throttle.admit("esme", Some(3), t0, 1)).count();
        assert_eq!(admitted, 3);
        assert!(!throttle.admit("esme", Some(3), t0 + Duration::from_millis(200), 1));
        assert!(throttle.admit("esme", Some(3), t0 + Duration::from_millis(400), 1));
        // Another account has its own bucket; no limit means no bucket.
        assert!(throttle.admit("other", Some(1), t0, 1));
        assert!((0..100).all(|_| throttle.admit("free", None, t0, 1)));
    }

    /// A `submit_multi` takes a token per destination; one to more
    /// destinations than the rate needs a full bucket and leaves a debt.
    #[test]
    fn a_submit_to_several_destinations_takes_a_token_for_each() {
        let throttle = Throttle::default();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert!(throttle.admit("esme", Some(10), at(0), 4));
        assert!(!throttle.admit("esme", Some(10), at(0), 8), "6 left");
        assert!(throttle.admit("esme", Some(10), at(0), 6));
        assert!(
            !throttle.admit("esme", Some(10), at(500), 20),
            "5 back, a full bucket needed"
        );
        assert!(
            throttle.admit("esme", Some(10), at(1500), 20),
            "full: 10 taken, 10 owed"
        );
        assert!(
            !throttle.admit("esme", Some(10), at(2500), 1),
            "the debt paid, nothing more"
        );
        assert!(throttle.admit("esme", Some(10), at(2600), 1));
    }

    #[test]
    fn a_shared_limit_refuses_past_its_rate_and_none_never_refuses() {
        let limit = RateLimit::new(Some(2));
        let t0 = Instant::now();
        assert_eq!((0..4).filter(|_| limit.admit(t0)).count(), 2);
        // Half a second brings back one token, and a long pause no more
        // than one second's worth.
        assert!(limit.admit(t0 + Duration::from_millis(500)));
        assert!(!limit.admit(t0 + Duration::from_millis(500)));
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..4).filter(|_| limit.admit(later)).count(), 2);

        let off = RateLimit::new(None);
        assert!((0..1000).all(|_| off.admit(t0)));
        let zero = RateLimit::new(Some(0));
        assert!((0..1000).all(|_| zero.admit(t0)));
    }

    #[test]
    fn a_backlog_refuses_for_a_window_after_one_whose_quickest_was_slow() {
        let ms = Duration::from_millis;
        let backlog = Backlog::new(Some(ms(50)));
        let t0 = Instant::now();
        // Slow work but too little of it to say anything.
        for i in 0..BACKLOG_MIN_SAMPLES - 1 {
            backlog.finished(ms(400), t0 + ms(u64::from(i)));
        }
        assert!(backlog.admit(t0 + ms(100)));
        // A window in which everything took over the target: the next one refuses.
        for i in 0..20 {
            backlog.finished(ms(60 + i), t0 + ms(100 + i));
        }
        assert!(backlog.admit(t0 + ms(150)), "the window is still open");
        assert!(!backlog.admit(t0 + ms(200)));
        assert!(!backlog.admit(t0 + ms(250)));
        // One quick finish among slow ones: the queue drained, admit again.
        for i in 0..20 {
            backlog.finished(if i == 7 { ms(10) } else { ms(300) }, t0 + ms(210 + i));
        }
        assert!(backlog.admit(t0 + ms(300)));
        // Slow again, then nothing finishes for a while: idle admits.
        for i in 0..20 {
            backlog.finished(ms(80), t0 + ms(310 + i));
        }
        assert!(!backlog.admit(t0 + ms(400)));
        assert!(backlog.admit(t0 + ms(700)));

        let off = Backlog::new(None);
        let zero = Backlog::new(Some(Duration::ZERO));
        for b in [&off, &zero] {
            for i in 0..100 {
                b.finished(ms(5_000), t0 + ms(i));
            }
            assert!(b.admit(t0 + ms(150)));
        }
    }

    #[test]
    fn a_manual_ticker_moves_only_when_told() {
        let ticker = Ticker::manual();
        let t0 = ticker.now();
        assert_eq!(ticker.now(), t0);
        ticker.advance(Duration::from_secs(1));
        assert_eq!(ticker.now(), t0 + Duration::from_secs(1));
        let real = Ticker::default();
        real.advance(Duration::from_secs(5));
        assert!(real.now() <= Instant::now());
    }
}

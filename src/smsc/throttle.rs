//! Per-account submission rate limits: a token bucket per system_id that
//! refills at `throughput_per_sec` tokens a second over real (monotonic)
//! time and holds at most one second's worth, so an ESME may burst up to its
//! rate and is then answered ESME_RTHROTTLED until tokens come back.
//!
//! Takes the time as an argument and does no I/O, so it is tested without
//! waiting; it never blocks a submission, it only says yes or no.

use std::collections::HashMap;
use std::sync::Mutex;
use tokio::time::Instant;

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// The buckets of every account that has a limit.
#[derive(Default)]
pub struct Throttle {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Throttle {
    /// Takes a token for one `submit_sm` of `system_id`. `None` or `Some(0)`
    /// means the account has no limit.
    pub fn admit(&self, system_id: &str, per_sec: Option<u32>, now: Instant) -> bool {
        let rate = match per_sec {
            None | Some(0) => return true,
            Some(rate) => f64::from(rate),
        };
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = buckets.entry(system_id.to_string()).or_insert(Bucket {
            tokens: rate,
            last: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(rate);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bursts_up_to_the_rate_then_refills() {
        let throttle = Throttle::default();
        let t0 = Instant::now();
        let admitted = (0..5).filter(|_| throttle.admit("esme", Some(3), t0)).count();
        assert_eq!(admitted, 3);
        assert!(!throttle.admit("esme", Some(3), t0 + Duration::from_millis(200)));
        assert!(throttle.admit("esme", Some(3), t0 + Duration::from_millis(400)));
        // Another account has its own bucket; no limit means no bucket.
        assert!(throttle.admit("other", Some(1), t0));
        assert!((0..100).all(|_| throttle.admit("free", None, t0)));
    }
}

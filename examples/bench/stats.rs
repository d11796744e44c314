//! Latency samples and the outcome of one measured run, kept as plain
//! numbers so that every workload reports the same way.

use std::time::Duration;

/// Latencies in microseconds, one per answered request.
#[derive(Debug, Default, Clone)]
pub struct Latencies {
    micros: Vec<u32>,
}

impl Latencies {
    pub fn record(&mut self, took: Duration) {
        self.micros.push(took.as_micros().min(u32::MAX as u128) as u32);
    }

    pub fn merge(&mut self, other: Latencies) {
        self.micros.extend(other.micros);
    }

    pub fn len(&self) -> usize {
        self.micros.len()
    }

    /// How many took longer than `limit`.
    pub fn count_above(&self, limit: Duration) -> u64 {
        let limit = limit.as_micros().min(u32::MAX as u128) as u32;
        self.micros.iter().filter(|&&m| m > limit).count() as u64
    }

    /// The `p`-th percentile (0–100) in milliseconds; `None` without samples.
    pub fn percentile_ms(&mut self, p: f64) -> Option<f64> {
        if self.micros.is_empty() {
            return None;
        }
        self.micros.sort_unstable();
        let rank = ((p / 100.0) * (self.micros.len() - 1) as f64).round() as usize;
        Some(f64::from(self.micros[rank.min(self.micros.len() - 1)]) / 1000.0)
    }
}

/// Counts and latencies of one run against one server.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Acknowledged (SMPP OK, SMTP 250, HTTP 2xx).
    pub ok: u64,
    /// Refused at once with the protocol's own overload answer
    /// (ESME_RTHROTTLED, SMTP 421/451, HTTP 429/503).
    pub refused: u64,
    /// Any other error answer.
    pub errors: u64,
    /// No answer within the client's timeout, or the connection broke.
    pub timeouts: u64,
    /// From when each request was due (open loop) or sent (closed loop).
    pub latency: Latencies,
    /// Refusals only, from when the request was sent: "at once" is
    /// checked on these.
    pub refusal_latency: Latencies,
    /// Acknowledged requests from when they were sent: the server's part
    /// of the latency, without waiting in the client for a free
    /// connection or window slot.
    pub service_latency: Latencies,
}

impl Tally {
    pub fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.refused += other.refused;
        self.errors += other.errors;
        self.timeouts += other.timeouts;
        self.latency.merge(other.latency);
        self.refusal_latency.merge(other.refusal_latency);
        self.service_latency.merge(other.service_latency);
    }
}

/// When the `index`-th request of an open-loop run is due, for `rate` per
/// second from `start`; latency is counted from this time, not from when a
/// busy connection got round to sending it (no coordinated omission).
pub fn due(start: tokio::time::Instant, rate: f64, index: u64) -> tokio::time::Instant {
    start + Duration::from_secs_f64(index as f64 / rate)
}

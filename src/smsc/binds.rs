//! The ESMEs bound now, for whoever asks "is my application connected, and
//! as what?" (`GET /v1/smsc/binds`, the console's SMSC page): each bind's
//! account, kind, peer and time, and what it did since. A session joins
//! when it enters the bound state and leaves when it leaves it, in
//! [`super::session`]'s one place the state changes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::clock::Millis;

/// One bound session as it is now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Bind {
    /// The SMSC's number for the connection (its log lines say `session=`).
    pub session: u64,
    pub system_id: String,
    /// `transmitter`, `receiver` or `transceiver`.
    pub kind: &'static str,
    pub peer: String,
    pub tls: bool,
    /// When it bound, on the simulation's clock, as every time otpgate
    /// shows.
    pub bound_at: Millis,
    /// Submits the SMSC took (`submit_sm_resp`, `data_sm_resp` or
    /// `submit_multi_resp` OK; a `submit_multi` counts once).
    pub submitted: u64,
    /// Delivery receipts and mobile-originated messages it acknowledged
    /// (`deliver_sm_resp` OK).
    pub delivered: u64,
}

/// What a bound session counts, shared with the registry.
#[derive(Debug, Default)]
pub struct Counts {
    submitted: AtomicU64,
    delivered: AtomicU64,
}

impl Counts {
    pub fn submitted(&self) {
        self.submitted.fetch_add(1, Ordering::Relaxed);
    }

    pub fn delivered(&self) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
    }
}

struct Entry {
    bind: Bind,
    counts: Arc<Counts>,
}

/// The registry: cheap to clone, all clones share one map.
#[derive(Clone, Default)]
pub struct Binds {
    inner: Arc<Mutex<BTreeMap<u64, Entry>>>,
}

impl std::fmt::Debug for Binds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Binds").finish_non_exhaustive()
    }
}

impl Binds {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Entry>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A session bound; its counts are what it adds to while bound.
    pub fn join(&self, bind: Bind) -> Arc<Counts> {
        let counts = Arc::new(Counts::default());
        self.lock().insert(
            bind.session,
            Entry {
                bind,
                counts: counts.clone(),
            },
        );
        counts
    }

    /// A session left the bound state (unbound, or its connection ended).
    pub fn leave(&self, session: u64) {
        self.lock().remove(&session);
    }

    /// Every bind now, oldest first.
    pub fn list(&self) -> Vec<Bind> {
        self.lock()
            .values()
            .map(|e| Bind {
                submitted: e.counts.submitted.load(Ordering::Relaxed),
                delivered: e.counts.delivered.load(Ordering::Relaxed),
                ..e.bind.clone()
            })
            .collect()
    }
}

/// One account as the SMSC sees it now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccountState {
    pub system_id: String,
    /// Its sessions bound now.
    pub binds: usize,
    /// Whether one of them is a receiver or a transceiver: receipts and
    /// mobile-originated messages go only to such a bind.
    pub can_receive: bool,
    /// Receipts (and mobile-originated messages) kept for it until a
    /// receiving bind comes.
    pub receipts_waiting: usize,
}

/// The SMSC's accounts and binds, for the HTTP API and the console.
#[derive(Clone, Debug)]
pub struct SmscView {
    pub binds: Binds,
    hub: super::ReceiptHub,
    accounts: Vec<String>,
}

impl SmscView {
    pub fn new(binds: Binds, hub: super::ReceiptHub, accounts: Vec<String>) -> SmscView {
        SmscView { binds, hub, accounts }
    }

    /// Every configured account (the OTP core's own among them), in the
    /// configuration's order.
    pub fn accounts(&self, binds: &[Bind]) -> Vec<AccountState> {
        self.accounts
            .iter()
            .map(|system_id| {
                let own: Vec<&Bind> = binds.iter().filter(|b| &b.system_id == system_id).collect();
                AccountState {
                    system_id: system_id.clone(),
                    binds: own.len(),
                    can_receive: own.iter().any(|b| b.kind != "transmitter"),
                    receipts_waiting: self.hub.pending(system_id),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind(session: u64, system_id: &str) -> Bind {
        Bind {
            session,
            system_id: system_id.into(),
            kind: "transmitter",
            peer: "127.0.0.1:40000".into(),
            tls: false,
            bound_at: 0,
            submitted: 0,
            delivered: 0,
        }
    }

    #[test]
    fn binds_are_listed_with_their_counts_until_they_leave() {
        let binds = Binds::default();
        let first = binds.join(bind(1, "qa-app"));
        binds.join(bind(2, "otpgate"));
        first.submitted();
        first.submitted();
        first.submitted();
        first.delivered();
        let listed = binds.list();
        assert_eq!(
            listed
                .iter()
                .map(|b| (b.session, b.submitted, b.delivered))
                .collect::<Vec<_>>(),
            [(1, 3, 1), (2, 0, 0)]
        );
        binds.leave(1);
        assert_eq!(binds.list().len(), 1);
    }
}

//! The receipt hub: where delivery receipts wait for an ESME that can take
//! them. It knows which sessions are bound to receive for each system_id
//! and which session submitted which message, and it routes each receipt
//! (and its copies for a long message's earlier parts, which the receipt
//! names) to the submitting session if it can receive, else to another
//! receiving bind of the account, else keeps it in memory until one binds.
//!
//! The hub holds no socket and never awaits while holding its lock; it never
//! logs a receipt's quoted text. Receipts kept here live in memory only: the
//! backend that calls [`ReceiptHub::deliver`] owns their durability (the
//! simulated network stores each until the hub says it is done with it,
//! with the part ids it names). Which session submitted a message is known
//! for this run only: after a restart a receipt goes to any receiving bind
//! of its account.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use super::{Alert, Delivery, MobileOriginated, Receipt};
use crate::recent::Recent;

/// Receipts kept per system_id while no session can take them; the oldest
/// is dropped (its sender told `false`) beyond this.
const MAX_PENDING_PER_ACCOUNT: usize = 10_000;
/// How many submissions the hub remembers the origin of.
const MAX_ORIGINS: usize = 100_000;

/// A receipt (or a mobile-originated message) on its way, with the promise
/// to tell the backend whether the ESME took it. Copies sent for the parts
/// of a long message carry no promise.
pub(crate) struct Queued {
    pub item: Delivery,
    done: Option<oneshot::Sender<bool>>,
}

impl Queued {
    /// Tells whoever waits whether the ESME accepted the receipt.
    pub fn finish(mut self, accepted: bool) {
        if let Some(done) = self.done.take() {
            let _ = done.send(accepted);
        }
    }
}

struct Attached {
    session: u64,
    tx: mpsc::UnboundedSender<Queued>,
}

type MessageKey = (String, String);

struct HubState {
    /// Receiver and transceiver sessions by system_id.
    sessions: HashMap<String, Vec<Attached>>,
    pending: HashMap<String, VecDeque<Queued>>,
    /// The session that submitted each message, for the newest
    /// [`MAX_ORIGINS`].
    origins: Recent<MessageKey, u64>,
    round_robin: usize,
}

/// Routes delivery receipts to bound ESMEs. Cheap to clone; all clones share
/// one state.
#[derive(Clone)]
pub struct ReceiptHub {
    state: Arc<Mutex<HubState>>,
    /// Counts sessions detached, for waiters on a receipt (see
    /// [`ReceiptHub::detaches`]).
    detached: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Default for ReceiptHub {
    fn default() -> Self {
        ReceiptHub {
            state: Arc::default(),
            detached: Arc::new(tokio::sync::watch::channel(0).0),
        }
    }
}

impl std::fmt::Debug for ReceiptHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiptHub").finish_non_exhaustive()
    }
}

impl ReceiptHub {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends a deliver_sm receipt (esm_class 0x04, text `id:X sub:001
    /// dlvrd:001 submit date:YYMMDDhhmm done date:YYMMDDhhmm stat:DELIVRD
    /// err:000 text:...`, TLVs receipted_message_id, message_state,
    /// network_error_code when set) to a receiver or transceiver session
    /// bound with that system_id (preferring the session that submitted it
    /// if it can receive), else keeps it in memory until one binds.
    ///
    /// The returned receiver resolves `true` when the ESME answered
    /// deliver_sm_resp OK, and `false` when it answered with an error status
    /// or the receipt could not be sent at all (an address SMPP cannot carry,
    /// or too many receipts waiting for the account). A receipt outstanding
    /// on a session that closes goes back to the hub and is sent again, so
    /// an ESME may see it twice. When the message was submitted in parts,
    /// each earlier part's id the receipt names gets a copy of it too, as a
    /// network that receipts every part would.
    pub fn deliver(&self, receipt: Receipt) -> oneshot::Receiver<bool> {
        let (tx, rx) = oneshot::channel();
        let mut state = self.lock();
        let origin = state.origin_of(&receipt.system_id, &receipt.message_id);
        for id in &receipt.part_ids {
            let copy = Queued {
                item: Delivery::Receipt(Receipt {
                    message_id: id.clone(),
                    part_ids: Vec::new(),
                    ..receipt.clone()
                }),
                done: None,
            };
            state.dispatch(copy, origin);
        }
        state.dispatch(
            Queued {
                item: Delivery::Receipt(receipt),
                done: Some(tx),
            },
            origin,
        );
        rx
    }

    /// Sends a mobile-originated message to a receiving bind of its
    /// account, else keeps it until one binds; answered as
    /// [`ReceiptHub::deliver`]'s receipts are.
    pub fn deliver_mobile(&self, message: MobileOriginated) -> oneshot::Receiver<bool> {
        let (tx, rx) = oneshot::channel();
        let queued = Queued {
            item: Delivery::Mobile(message),
            done: Some(tx),
        };
        self.lock().dispatch(queued, None);
        rx
    }

    /// Sends an `alert_notification` to a receiving bind of its account,
    /// else keeps it until one binds. It has no answer in SMPP: it is done
    /// once written.
    pub fn alert(&self, alert: Alert) {
        let queued = Queued {
            item: Delivery::Alert(alert),
            done: None,
        };
        self.lock().dispatch(queued, None);
    }

    /// The accounts with a receiving bind up now.
    pub fn receiving_accounts(&self) -> Vec<String> {
        let mut accounts: Vec<String> = self.lock().sessions.keys().cloned().collect();
        accounts.sort();
        accounts
    }

    /// Whether a session that can receive is bound for `system_id`: a
    /// receipt for it goes out now rather than waiting for a bind.
    pub fn can_receive(&self, system_id: &str) -> bool {
        self.lock().sessions.contains_key(system_id)
    }

    /// Changes whenever a session is detached (its link dropped, or the
    /// SMSC is stopping): one waiting for an answer from a session that
    /// may be gone looks again with [`ReceiptHub::can_receive`].
    pub fn detaches(&self) -> tokio::sync::watch::Receiver<u64> {
        self.detached.subscribe()
    }

    /// How many receipts wait for `system_id` to bind.
    pub fn pending(&self, system_id: &str) -> usize {
        self.lock().pending.get(system_id).map_or(0, VecDeque::len)
    }

    /// Registers a session that can receive for `system_id` and hands it the
    /// receipts that were waiting.
    pub(crate) fn attach(&self, system_id: &str, session: u64) -> mpsc::UnboundedReceiver<Queued> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut state = self.lock();
        let waiting = state.pending.remove(system_id).unwrap_or_default();
        for queued in waiting {
            if let Err(mpsc::error::SendError(queued)) = tx.send(queued) {
                queued.finish(false);
            }
        }
        state
            .sessions
            .entry(system_id.to_string())
            .or_default()
            .push(Attached { session, tx });
        rx
    }

    /// Unregisters a session and routes again everything it held: receipts
    /// it sent but saw no answer to, receipts waiting for its window, and
    /// whatever is still in its channel.
    pub(crate) fn detach(
        &self,
        system_id: &str,
        session: u64,
        mut rx: mpsc::UnboundedReceiver<Queued>,
        held: Vec<Queued>,
    ) {
        let mut state = self.lock();
        if let Some(list) = state.sessions.get_mut(system_id) {
            list.retain(|a| a.session != session);
            if list.is_empty() {
                state.sessions.remove(system_id);
            }
        }
        rx.close();
        let mut again = held;
        while let Ok(queued) = rx.try_recv() {
            again.push(queued);
        }
        for queued in again {
            let origin = match &queued.item {
                Delivery::Receipt(r) => state.origin_of(&r.system_id, &r.message_id),
                Delivery::Mobile(_) | Delivery::Alert(_) => None,
            };
            state.dispatch(queued, origin);
        }
        drop(state);
        self.detached.send_modify(|n| *n += 1);
    }

    /// Remembers which session submitted `message_id`.
    pub(crate) fn note_submitted(&self, system_id: &str, message_id: &str, session: u64) {
        let mut state = self.lock();
        let key = (system_id.to_string(), message_id.to_string());
        state.origins.insert(key, session);
    }
}

impl Default for HubState {
    fn default() -> Self {
        HubState {
            sessions: HashMap::new(),
            pending: HashMap::new(),
            origins: Recent::new(MAX_ORIGINS),
            round_robin: 0,
        }
    }
}

impl HubState {
    /// The session that submitted a message, if known.
    fn origin_of(&self, system_id: &str, message_id: &str) -> Option<u64> {
        self.origins
            .get(&(system_id.to_string(), message_id.to_string()))
            .copied()
    }

    /// Sends to `origin`'s session when it can receive, else to another
    /// receiving bind of the account, else keeps the receipt waiting.
    fn dispatch(&mut self, mut queued: Queued, origin: Option<u64>) {
        let system_id = queued.item.system_id().to_string();
        let round_robin = self.round_robin;
        self.round_robin = self.round_robin.wrapping_add(1);
        if let Some(list) = self.sessions.get_mut(&system_id) {
            while !list.is_empty() {
                let index = origin
                    .and_then(|s| list.iter().position(|a| a.session == s))
                    .unwrap_or(round_robin % list.len());
                match list[index].tx.send(queued) {
                    Ok(()) => return,
                    Err(mpsc::error::SendError(back)) => {
                        // The session is gone but has not detached yet.
                        list.remove(index);
                        queued = back;
                    }
                }
            }
        }
        let waiting = self.pending.entry(system_id).or_default();
        waiting.push_back(queued);
        while waiting.len() > MAX_PENDING_PER_ACCOUNT {
            if let Some(oldest) = waiting.pop_front() {
                tracing::warn!(
                    system_id = %oldest.item.system_id(),
                    message_id = %oldest.item.message_id(),
                    "too many deliveries waiting for a bind; dropping the oldest"
                );
                oldest.finish(false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::smsc::tests::receipt;

    #[test]
    fn keeps_receipts_until_a_bind_and_prefers_the_submitter() {
        let hub = ReceiptHub::new();
        let _kept = hub.deliver(receipt("esme", "m1"));
        assert_eq!(hub.pending("esme"), 1);
        let mut first = hub.attach("esme", 1);
        assert_eq!(
            first.try_recv().map(|q| q.item.message_id().to_string()).ok(),
            Some("m1".into())
        );
        let mut second = hub.attach("esme", 2);
        hub.note_submitted("esme", "m2", 2);
        let _r = hub.deliver(receipt("esme", "m2"));
        assert!(first.try_recv().is_err());
        assert_eq!(
            second.try_recv().map(|q| q.item.message_id().to_string()).ok(),
            Some("m2".into())
        );
    }

    #[test]
    fn a_detached_sessions_receipts_go_to_another_bind() {
        let hub = ReceiptHub::new();
        let first = hub.attach("esme", 1);
        let mut done = hub.deliver(receipt("esme", "m1"));
        let mut second = hub.attach("esme", 2);
        hub.detach("esme", 1, first, vec![]);
        let queued = second.try_recv().expect("moved to the other bind");
        queued.finish(true);
        assert_eq!(done.try_recv(), Ok(true));
    }

    #[test]
    fn earlier_parts_get_copies() {
        let hub = ReceiptHub::new();
        let mut rx = hub.attach("esme", 1);
        hub.note_submitted("esme", "whole", 1);
        let _r = hub.deliver(Receipt {
            part_ids: vec!["p1".into(), "p2".into()],
            ..receipt("esme", "whole")
        });
        let ids: Vec<String> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|q| q.item.message_id().to_string())
            .collect();
        assert_eq!(ids, vec!["p1", "p2", "whole"]);
    }
}

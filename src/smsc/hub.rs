//! The receipt hub: where delivery receipts wait for an ESME that can take
//! them. It knows which sessions are bound to receive for each system_id,
//! which session submitted which message, and which part ids stand for a
//! long message, and it routes each receipt to the submitting session if it
//! can receive, else to another receiving bind of the account, else keeps it
//! in memory until one binds.
//!
//! The hub holds no socket and never awaits while holding its lock; it never
//! logs a receipt's quoted text. Receipts kept here live in memory only: the
//! backend that calls [`ReceiptHub::deliver`] owns their durability (the
//! simulated network stores each until the hub says it is done with it,
//! with the part ids it names). What the hub notes of sessions and parts is
//! a fast path for this run: after a restart a receipt goes to any
//! receiving bind of its account, and the backend resolves part ids.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use super::Receipt;

/// Receipts kept per system_id while no session can take them; the oldest
/// is dropped (its sender told `false`) beyond this.
const MAX_PENDING_PER_ACCOUNT: usize = 10_000;
/// How many submissions the hub remembers the origin and part ids of.
const MAX_ORIGINS: usize = 100_000;

/// A receipt on its way, with the promise to tell the backend whether the
/// ESME took it. Copies sent for the parts of a long message carry no promise.
pub(crate) struct Queued {
    pub receipt: Receipt,
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

struct Origin {
    session: u64,
    /// Ids given to the earlier parts of a long message; each gets a copy of
    /// the message's receipt, as a network that receipts every part would.
    part_ids: Vec<String>,
}

type MessageKey = (String, String);

#[derive(Default)]
struct HubState {
    /// Receiver and transceiver sessions by system_id.
    sessions: HashMap<String, Vec<Attached>>,
    pending: HashMap<String, VecDeque<Queued>>,
    origins: HashMap<MessageKey, Origin>,
    /// Part id → the whole message's id, per system_id.
    aliases: HashMap<MessageKey, String>,
    /// Insertion order of `origins`, to forget the oldest.
    order: VecDeque<MessageKey>,
    round_robin: usize,
}

/// Routes delivery receipts to bound ESMEs. Cheap to clone; all clones share
/// one state.
#[derive(Clone, Default)]
pub struct ReceiptHub {
    state: Arc<Mutex<HubState>>,
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
    /// each earlier part's id gets a copy of the receipt too: the ids the
    /// receipt names (the backend keeps them, across restarts), else those
    /// the submitting session noted.
    pub fn deliver(&self, receipt: Receipt) -> oneshot::Receiver<bool> {
        let (tx, rx) = oneshot::channel();
        let mut state = self.lock();
        let key = (receipt.system_id.clone(), receipt.message_id.clone());
        let part_ids = match (&receipt.part_ids[..], state.origins.get(&key)) {
            ([], Some(origin)) => origin.part_ids.clone(),
            (named, _) => named.to_vec(),
        };
        let copies: Vec<Queued> = part_ids
            .into_iter()
            .map(|id| Queued {
                receipt: Receipt {
                    message_id: id,
                    part_ids: Vec::new(),
                    ..receipt.clone()
                },
                done: None,
            })
            .collect();
        for copy in copies {
            state.dispatch(copy);
        }
        state.dispatch(Queued {
            receipt,
            done: Some(tx),
        });
        rx
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
            state.dispatch(queued);
        }
    }

    /// Remembers which session submitted `message_id` and the ids given to
    /// the earlier parts of a long message.
    pub(crate) fn note_submitted(&self, system_id: &str, message_id: &str, session: u64, part_ids: Vec<String>) {
        let mut state = self.lock();
        for part in &part_ids {
            state
                .aliases
                .insert((system_id.to_string(), part.clone()), message_id.to_string());
        }
        let key = (system_id.to_string(), message_id.to_string());
        state.origins.insert(key.clone(), Origin { session, part_ids });
        state.order.push_back(key);
        while state.order.len() > MAX_ORIGINS {
            let Some(old) = state.order.pop_front() else {
                break;
            };
            if let Some(origin) = state.origins.remove(&old) {
                for part in origin.part_ids {
                    state.aliases.remove(&(old.0.clone(), part));
                }
            }
        }
    }

    /// The whole message's id for an earlier part's id; any other id as is.
    pub(crate) fn resolve(&self, system_id: &str, message_id: &str) -> String {
        self.lock()
            .aliases
            .get(&(system_id.to_string(), message_id.to_string()))
            .cloned()
            .unwrap_or_else(|| message_id.to_string())
    }
}

impl HubState {
    fn dispatch(&mut self, mut queued: Queued) {
        let system_id = queued.receipt.system_id.clone();
        let whole_id = self
            .aliases
            .get(&(system_id.clone(), queued.receipt.message_id.clone()))
            .cloned()
            .unwrap_or_else(|| queued.receipt.message_id.clone());
        let origin = self.origins.get(&(system_id.clone(), whole_id)).map(|o| o.session);
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
                    system_id = %oldest.receipt.system_id,
                    message_id = %oldest.receipt.message_id,
                    "too many receipts waiting for a bind; dropping the oldest"
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
        assert_eq!(first.try_recv().map(|q| q.receipt.message_id).ok(), Some("m1".into()));
        let mut second = hub.attach("esme", 2);
        hub.note_submitted("esme", "m2", 2, vec![]);
        let _r = hub.deliver(receipt("esme", "m2"));
        assert!(first.try_recv().is_err());
        assert_eq!(second.try_recv().map(|q| q.receipt.message_id).ok(), Some("m2".into()));
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
    fn earlier_parts_get_copies_and_resolve_to_the_whole() {
        let hub = ReceiptHub::new();
        let mut rx = hub.attach("esme", 1);
        hub.note_submitted("esme", "whole", 1, vec!["p1".into(), "p2".into()]);
        assert_eq!(hub.resolve("esme", "p2"), "whole");
        assert_eq!(hub.resolve("esme", "other"), "other");
        let _r = hub.deliver(receipt("esme", "whole"));
        let ids: Vec<String> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|q| q.receipt.message_id)
            .collect();
        assert_eq!(ids, vec!["p1", "p2", "whole"]);
    }
}

//! The simulated world behind the protocols: handsets with their inboxes,
//! the SMS network that carries SMSC messages to them (`sms`), and the
//! chaos switch.
//!
//! Only this world holds delivered texts in plain, as a phone would. It
//! never talks to the OTP core: messages reach it over SMPP and SMTP.

pub mod sms;

use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::carrier::{CarrierSet, HandsetState, SenderProfile};
use crate::changes::{After, Changes};
use crate::clock::Millis;
use crate::store::{Batch, Store, StoreError, Tree};

/// One SMS as the phone shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxMessage {
    /// The sender ID this handset's carrier displays.
    pub from: String,
    pub text: String,
    pub received_at: Millis,
    /// The SMSC message id that brought it.
    pub message_id: String,
}

/// Chaos settings: off by default; per-carrier rates override the files'.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Chaos {
    pub enabled: bool,
    /// carrier id → rate overrides (`throttle`, `failure`, `long_delay`).
    #[serde(default)]
    pub carriers: std::collections::BTreeMap<String, ChaosRates>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChaosRates {
    #[serde(default)]
    pub throttle: Option<f64>,
    #[serde(default)]
    pub failure: Option<f64>,
    #[serde(default)]
    pub long_delay: Option<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum WorldError {
    #[error("unknown carrier `{0}`; see GET /v1/carriers")]
    UnknownCarrier(String),
    #[error("invalid handset: {0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Handsets, inboxes and the carriers they are on.
#[derive(Clone)]
pub struct World {
    store: Store,
    handsets: Tree,
    inbox: Tree,
    pub carriers: Arc<CarrierSet>,
    pub profile: SenderProfile,
    pub default_carrier: String,
    chaos: Arc<RwLock<Chaos>>,
    /// One handset edit at a time, so no patch is lost to another.
    edits: Arc<tokio::sync::Mutex<()>>,
    /// Woken when a message reached an inbox and is durable there, for
    /// readers waiting for one (`?wait=`).
    arrivals: Changes,
}

impl World {
    pub fn open(
        store: &Store,
        carriers: Arc<CarrierSet>,
        profile: SenderProfile,
        default_carrier: String,
        chaos: bool,
    ) -> Result<World, StoreError> {
        Ok(World {
            store: store.clone(),
            handsets: store.tree("handsets")?,
            inbox: store.tree("inbox")?,
            carriers,
            profile,
            default_carrier,
            chaos: Arc::new(RwLock::new(Chaos {
                enabled: chaos,
                ..Chaos::default()
            })),
            edits: Arc::default(),
            arrivals: Changes::default(),
        })
    }

    /// The handset put for a number, if any ([`crate::desk::Desk::handset`]
    /// adds the default one of a number messages went to).
    pub fn handset(&self, number: &str) -> Result<Option<HandsetState>, StoreError> {
        self.handsets.get(number)
    }

    /// The handset for a number: the one put for it, else the default one
    /// (on the default carrier, reachable), which is not stored. Stored, the
    /// defaults grew with every new number a client sent to, the one record
    /// kept that grew with traffic, and cost a write and a lookup in a
    /// growing tree per new number.
    pub fn handset_or_default(&self, number: &str) -> Result<HandsetState, StoreError> {
        Ok(self.handsets.get(number)?.unwrap_or_else(|| self.default_handset()))
    }

    /// A new number's handset: on the default carrier, reachable.
    fn default_handset(&self) -> HandsetState {
        HandsetState {
            carrier: self.default_carrier.clone(),
            ..HandsetState::default()
        }
    }

    /// Applies a JSON merge patch to a handset (omitted fields keep their
    /// value or default). Returns the new state and the one it replaced
    /// (`None` when it was created).
    pub async fn put_handset(
        &self,
        number: &str,
        patch: &serde_json::Value,
    ) -> Result<(HandsetState, Option<HandsetState>), WorldError> {
        let _edit = self.edits.lock().await;
        let existing = self.handsets.get::<HandsetState>(number)?;
        let base = existing.clone().unwrap_or_else(|| self.default_handset());
        let mut value = serde_json::to_value(&base).map_err(|e| WorldError::Invalid(e.to_string()))?;
        merge(&mut value, patch);
        let handset: HandsetState = serde_json::from_value(value).map_err(|e| WorldError::Invalid(e.to_string()))?;
        if self.carriers.get(&handset.carrier).is_none() {
            return Err(WorldError::UnknownCarrier(handset.carrier));
        }
        self.handsets.put(number, &handset)?;
        self.store.flush().await?;
        Ok((handset, existing))
    }

    /// Puts a message in a handset's inbox and returns its key; written,
    /// not synced: the caller syncs it with the delivery it belongs to.
    pub fn push_inbox(&self, number: &str, message: InboxMessage) -> Result<String, StoreError> {
        let key = format!("{number}\0{:015}", self.store.next_id()?);
        self.inbox.put(&key, &message)?;
        Ok(key)
    }

    /// Takes a message out of an inbox (retention), as part of `batch`.
    pub fn remove_inbox(&self, batch: &mut Batch, key: &str) {
        batch.remove(&self.inbox, key);
    }

    /// The inbox oldest first.
    pub fn inbox(&self, number: &str) -> Result<Vec<InboxMessage>, StoreError> {
        self.inbox_after(number, None)
    }

    /// The inbox oldest first, only what arrived after `after` if given.
    pub fn inbox_after(&self, number: &str, after: Option<&After>) -> Result<Vec<InboxMessage>, StoreError> {
        let inbox: Vec<InboxMessage> = self
            .inbox
            .scan_prefix::<InboxMessage>(&format!("{number}\0"))?
            .into_iter()
            .map(|(_, m)| m)
            .collect();
        Ok(match after {
            None => inbox,
            Some(after) => after.keep_newer(inbox, |m| &m.message_id, |m| m.received_at),
        })
    }

    /// The newest 6-digit code that reached the phone, with its message.
    pub fn newest_code(&self, number: &str) -> Result<Option<(String, InboxMessage)>, StoreError> {
        self.newest_code_after(number, None)
    }

    /// The newest 6-digit code that reached the phone after `after` if
    /// given, with its message.
    pub fn newest_code_after(
        &self,
        number: &str,
        after: Option<&After>,
    ) -> Result<Option<(String, InboxMessage)>, StoreError> {
        Ok(self
            .inbox_after(number, after)?
            .into_iter()
            .rev()
            .find_map(|m| crate::otp::find_code(&m.text).map(|c| (c, m))))
    }

    /// Empties a handset's inbox, as its owner deleting every message;
    /// returns how many there were. Durable when it returns. The delivery
    /// log still tells what was delivered.
    pub async fn clear_inbox(&self, number: &str) -> Result<usize, StoreError> {
        let keys = self.inbox.keys_with_prefix(&format!("{number}\0"))?;
        let mut batch = self.store.batch();
        for key in &keys {
            batch.remove(&self.inbox, key);
        }
        self.store.apply(batch)?;
        self.store.flush().await?;
        Ok(keys.len())
    }

    /// Tells readers waiting for `number`'s inbox that a message reached
    /// it; call once it is durable there.
    pub fn arrived(&self, number: &str) {
        self.arrivals.changed(number);
    }

    /// What readers waiting for an inbox wait on, keyed by number.
    pub fn arrivals(&self) -> &Changes {
        &self.arrivals
    }

    pub fn all_handsets(&self) -> Result<Vec<(String, HandsetState)>, StoreError> {
        self.handsets.scan_prefix("")
    }

    /// Remembers where a virtual clock stands, so a restart resumes there.
    pub async fn save_clock(&self, now: Millis) -> Result<(), StoreError> {
        self.store.tree("meta")?.put("virtual_now", &now)?;
        self.store.flush().await
    }

    pub fn saved_clock(store: &Store) -> Result<Option<Millis>, StoreError> {
        store.tree("meta")?.get("virtual_now")
    }

    pub fn chaos(&self) -> Chaos {
        self.chaos.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_chaos(&self, chaos: Chaos) {
        *self.chaos.write().unwrap_or_else(|e| e.into_inner()) = chaos;
    }

    /// The sender a handset on this number will see for the profile's number.
    pub fn shown_sender(&self, number: &str) -> String {
        let carrier_id = self
            .handsets
            .get::<HandsetState>(number)
            .ok()
            .flatten()
            .map(|h| h.carrier)
            .unwrap_or_else(|| self.default_carrier.clone());
        match self.carriers.get(&carrier_id) {
            Some(c) => c.displayed_sender(&self.profile.number, &self.profile),
            None => self.profile.number.clone(),
        }
    }
}

/// RFC 7396 JSON merge patch.
pub fn merge(target: &mut serde_json::Value, patch: &serde_json::Value) {
    match (target, patch) {
        (serde_json::Value::Object(t), serde_json::Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(serde_json::Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

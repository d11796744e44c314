//! Reassembly of long messages submitted in parts (UDH or SAR TLVs): parts
//! are kept per (system_id, source, destination, reference) until all have
//! arrived, in any order, and then handed back in order of their number.
//!
//! Pure bookkeeping with the time passed in (the simulation's clock, so a
//! virtual clock's advance ages partial messages too): no I/O, no logging
//! (the parts hold message text). Partial messages older than `max_age` are
//! dropped, and at most `max_messages` are kept, so a peer cannot fill
//! memory with first parts that never get a last one. What was dropped is
//! told ([`Reassembler::take_dropped`]), message by message with the cause,
//! since each part was acknowledged with an id its ESME may ask about.

use std::collections::{BTreeMap, HashMap};

use crate::clock::Millis;

/// Which long message a part belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PartKey {
    pub system_id: String,
    pub source: String,
    pub dest: String,
    pub reference: u16,
}

/// One buffered part: its number, its user data (headers removed, still
/// encoded), what the session wants to remember about it, and the message
/// id its `submit_sm_resp` carried.
#[derive(Debug, Clone)]
pub struct Part<M> {
    pub seq: u8,
    pub user_data: Vec<u8>,
    pub meta: M,
    pub part_id: String,
}

/// The result of adding a part.
#[derive(Debug)]
pub enum Added<M> {
    /// More parts are missing; answer this one with `part_id`.
    Buffered { part_id: String },
    /// This part completed the message.
    Complete(Complete<M>),
    /// This part would make its message carry more than a long message
    /// may; it was not taken.
    TooLong,
}

/// A message with all of its parts.
#[derive(Debug)]
pub struct Complete<M> {
    pub key: PartKey,
    pub total: u8,
    /// All parts in order of their number.
    pub parts: Vec<Part<M>>,
    /// The number of the part that arrived last and completed the message.
    pub completing_seq: u8,
}

impl<M> Complete<M> {
    /// The ids already given to the parts that arrived before the last one.
    pub fn earlier_ids(&self) -> Vec<String> {
        self.parts
            .iter()
            .filter(|p| p.seq != self.completing_seq)
            .map(|p| p.part_id.clone())
            .collect()
    }

    /// The parts' user data joined in order.
    pub fn user_data(&self) -> Vec<u8> {
        self.parts.iter().flat_map(|p| p.user_data.iter().copied()).collect()
    }
}

/// Why a partial message was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropCause {
    /// Its other parts did not come within the age limit.
    TooOld,
    /// Too many partial messages were waiting, or they held too much
    /// user data: the oldest made room.
    TooMany,
    /// A part under the same reference announced another total: the
    /// message started over.
    StartedOver,
    /// Its ESME cancelled it (`cancel_sm` by one of its parts' ids).
    Cancelled,
}

/// A partial message dropped unfinished: the ids of the parts it had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub part_ids: Vec<String>,
    pub cause: DropCause,
}

struct Pending<M> {
    total: u8,
    parts: BTreeMap<u8, Part<M>>,
    started: Millis,
    /// The user data its parts hold.
    bytes: usize,
}

/// User data all partial messages may hold together, by default: past it
/// the oldest are dropped ([`DropCause::TooMany`]).
pub const DEFAULT_MAX_BYTES: usize = 32 << 20;
/// User data one long message may carry, by default: 64 KiB, above the
/// 35,700 octets of 255 parts of 140 and as much as one PDU can carry.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 << 10;

/// Partial long messages.
pub struct Reassembler<M> {
    pending: HashMap<PartKey, Pending<M>>,
    max_messages: usize,
    max_age: Millis,
    max_bytes: usize,
    max_message_bytes: usize,
    /// The user data all pending parts hold.
    bytes: usize,
    /// The messages dropped unfinished since the last
    /// [`Reassembler::take_dropped`].
    dropped: Vec<Dropped>,
}

impl<M> Reassembler<M> {
    pub fn new(max_messages: usize, max_age: Millis) -> Reassembler<M> {
        Reassembler {
            pending: HashMap::new(),
            max_messages: max_messages.max(1),
            max_age,
            max_bytes: DEFAULT_MAX_BYTES,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            bytes: 0,
            dropped: Vec::new(),
        }
    }

    /// With other limits on the user data held: `total` by all partial
    /// messages, `per_message` by one (at most `total`).
    #[cfg(test)]
    pub fn with_bytes(mut self, total: usize, per_message: usize) -> Reassembler<M> {
        self.max_bytes = total.max(1);
        self.max_message_bytes = per_message.clamp(1, self.max_bytes);
        self
    }

    /// How many long messages are waiting for parts.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.pending.len()
    }

    /// The user data all waiting parts hold.
    #[cfg(test)]
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Adds part `seq` of `total`. A part sent again (an ESME retrying)
    /// replaces the earlier copy and keeps its id; a part announcing a
    /// different total starts the message over. `new_id` names a part that
    /// has no id yet. A part that would make its message carry more than
    /// the per-message limit is not taken ([`Added::TooLong`]); one that
    /// makes all of them hold more than the total limit drops the oldest
    /// others.
    #[allow(clippy::too_many_arguments)]
    pub fn add(
        &mut self,
        key: PartKey,
        total: u8,
        seq: u8,
        user_data: Vec<u8>,
        meta: M,
        now: Millis,
        new_id: impl FnOnce() -> String,
    ) -> Added<M> {
        self.expire(now);
        if self.pending.get(&key).is_some_and(|p| p.total != total) {
            self.drop_message(&key, DropCause::StartedOver);
        }
        let (held, replaced) = match self.pending.get(&key) {
            Some(p) => (p.bytes, p.parts.get(&seq).map_or(0, |part| part.user_data.len())),
            None => (0, 0),
        };
        if held - replaced + user_data.len() > self.max_message_bytes {
            return Added::TooLong;
        }
        if !self.pending.contains_key(&key) && self.pending.len() >= self.max_messages {
            self.drop_oldest_but(&key);
        }
        let part_id = match self.pending.get(&key).and_then(|p| p.parts.get(&seq)) {
            Some(existing) => existing.part_id.clone(),
            None => new_id(),
        };
        let part = Part {
            seq,
            user_data,
            meta,
            part_id: part_id.clone(),
        };
        let came = self.insert_part(key.clone(), total, part, now);
        while self.bytes > self.max_bytes && self.drop_oldest_but(&key) {}
        if came < usize::from(total) {
            return Added::Buffered { part_id };
        }
        let parts = self
            .take(&key)
            .map(|p| p.parts.into_values().collect())
            .unwrap_or_default();
        Added::Complete(Complete {
            key,
            total,
            parts,
            completing_seq: seq,
        })
    }

    /// Puts a part in its message (started at `started` if it is the
    /// first), replacing an earlier copy; returns how many parts the
    /// message has.
    fn insert_part(&mut self, key: PartKey, total: u8, part: Part<M>, started: Millis) -> usize {
        let pending = self.pending.entry(key).or_insert_with(|| Pending {
            total,
            parts: BTreeMap::new(),
            started,
            bytes: 0,
        });
        pending.started = pending.started.min(started);
        let added = part.user_data.len();
        let removed = pending
            .parts
            .insert(part.seq, part)
            .map_or(0, |old| old.user_data.len());
        pending.bytes = pending.bytes + added - removed;
        self.bytes = self.bytes + added - removed;
        pending.parts.len()
    }

    /// Takes a partial message out.
    fn take(&mut self, key: &PartKey) -> Option<Pending<M>> {
        let pending = self.pending.remove(key)?;
        self.bytes -= pending.bytes;
        Some(pending)
    }

    /// Drops the oldest partial message other than `keep`, if there is
    /// one, to make room.
    fn drop_oldest_but(&mut self, keep: &PartKey) -> bool {
        let oldest = self
            .pending
            .iter()
            .filter(|(k, _)| *k != keep)
            .min_by_key(|(_, p)| p.started)
            .map(|(k, _)| k.clone());
        match oldest {
            Some(oldest) => {
                self.drop_message(&oldest, DropCause::TooMany);
                true
            }
            None => false,
        }
    }

    /// Drops the partial messages `max_age` old or older at `now`; they go
    /// to [`Reassembler::take_dropped`].
    pub fn expire(&mut self, now: Millis) {
        let max_age = self.max_age;
        let expired: Vec<PartKey> = self
            .pending
            .iter()
            .filter(|(_, p)| now.saturating_sub(p.started) >= max_age)
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired {
            self.drop_message(&key, DropCause::TooOld);
        }
    }

    /// When the partial message under `key` reaches its age limit, if one
    /// is waiting: [`Reassembler::expire`] at that time drops it.
    pub fn deadline(&self, key: &PartKey) -> Option<Millis> {
        self.pending.get(key).map(|p| p.started.saturating_add(self.max_age))
    }

    /// When each waiting partial message reaches its age limit.
    pub fn deadlines(&self) -> Vec<Millis> {
        self.pending
            .values()
            .map(|p| p.started.saturating_add(self.max_age))
            .collect()
    }

    /// Drops a partial message unfinished, noting its parts' ids.
    fn drop_message(&mut self, key: &PartKey, cause: DropCause) {
        if let Some(p) = self.take(key) {
            let part_ids = p.parts.into_values().map(|part| part.part_id).collect();
            self.dropped.push(Dropped { part_ids, cause });
        }
    }

    /// Takes out the partial message of `system_id` that has a part with
    /// id `part_id`, if one is waiting: its ESME cancelled it.
    pub fn cancel(&mut self, system_id: &str, part_id: &str) -> Option<Dropped> {
        let key = self
            .pending
            .iter()
            .find(|(k, p)| k.system_id == system_id && p.parts.values().any(|part| part.part_id == part_id))
            .map(|(k, _)| k.clone())?;
        let p = self.take(&key)?;
        Some(Dropped {
            part_ids: p.parts.into_values().map(|part| part.part_id).collect(),
            cause: DropCause::Cancelled,
        })
    }

    /// The messages dropped unfinished (too old, too many, started over
    /// with another total, or past the limits on what they hold) since the
    /// last call.
    pub fn take_dropped(&mut self) -> Vec<Dropped> {
        std::mem::take(&mut self.dropped)
    }

    /// Takes back one part kept from before a restart, which arrived at
    /// `arrived`: its message's age counts from its earliest part. A part
    /// whose total disagrees with the parts taken back before it is
    /// dropped ([`DropCause::StartedOver`]), and so are the oldest
    /// messages when there are more than the limits allow.
    pub fn keep(&mut self, key: PartKey, total: u8, part: Part<M>, arrived: Millis) {
        if self.pending.get(&key).is_some_and(|p| p.total != total) {
            self.dropped.push(Dropped {
                part_ids: vec![part.part_id],
                cause: DropCause::StartedOver,
            });
            return;
        }
        self.insert_part(key.clone(), total, part, arrived);
        while (self.bytes > self.max_bytes || self.pending.len() > self.max_messages) && self.drop_oldest_but(&key) {}
    }

    /// Puts back the parts that arrived before the completing one, after the
    /// whole message could not be stored, so that the ESME's retry of the
    /// last part completes it again.
    pub fn restore(&mut self, complete: Complete<M>, now: Millis) {
        let Complete {
            key,
            parts,
            completing_seq,
            total,
        } = complete;
        if self.pending.get(&key).is_some_and(|p| p.total != total) {
            self.drop_message(&key, DropCause::StartedOver);
        }
        for part in parts.into_iter().filter(|p| p.seq != completing_seq) {
            self.insert_part(key.clone(), total, part, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(reference: u16) -> PartKey {
        PartKey {
            system_id: "esme".into(),
            source: "0354600124".into(),
            dest: "819012345678".into(),
            reference,
        }
    }

    fn add(r: &mut Reassembler<()>, reference: u16, total: u8, seq: u8, now: Millis) -> Added<()> {
        let data = vec![b'a' + seq];
        r.add(key(reference), total, seq, data, (), now, || {
            format!("p{reference}-{seq}")
        })
    }

    #[test]
    fn out_of_order_parts_come_back_in_order() {
        let now: Millis = 1_000_000;
        let mut r = Reassembler::new(10, 600_000);
        assert!(matches!(add(&mut r, 1, 3, 3, now), Added::Buffered { part_id } if part_id == "p1-3"));
        assert!(matches!(add(&mut r, 1, 3, 1, now), Added::Buffered { .. }));
        // Another message with another reference does not mix in.
        assert!(matches!(add(&mut r, 2, 2, 1, now), Added::Buffered { .. }));
        let Added::Complete(done) = add(&mut r, 1, 3, 2, now) else {
            panic!("three parts make the message");
        };
        assert_eq!(done.user_data(), b"bcd");
        assert_eq!(done.completing_seq, 2);
        assert_eq!(done.earlier_ids(), vec!["p1-1", "p1-3"]);
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn a_resent_part_keeps_its_id() {
        let now: Millis = 1_000_000;
        let mut r = Reassembler::new(10, 600_000);
        add(&mut r, 5, 2, 1, now);
        let again = r.add(key(5), 2, 1, b"x".to_vec(), (), now, || "fresh".into());
        assert!(matches!(again, Added::Buffered { part_id } if part_id == "p5-1"));
    }

    #[test]
    fn restore_lets_a_retried_last_part_complete() {
        let now: Millis = 1_000_000;
        let mut r = Reassembler::new(10, 600_000);
        add(&mut r, 9, 2, 1, now);
        let Added::Complete(done) = add(&mut r, 9, 2, 2, now) else {
            panic!("complete");
        };
        r.restore(done, now);
        assert!(matches!(add(&mut r, 9, 2, 2, now), Added::Complete(_)));
    }

    #[test]
    fn parts_kept_from_before_a_restart_complete_with_the_last_part() {
        let mut r = Reassembler::new(10, 60_000);
        let now: Millis = 1_000_000;
        for seq in [1, 2] {
            let part = Part {
                seq,
                user_data: vec![seq],
                meta: (),
                part_id: format!("p{seq}"),
            };
            r.keep(key(7), 3, part, now);
        }
        match add(&mut r, 7, 3, 3, now) {
            Added::Complete(c) => {
                assert_eq!(c.user_data(), vec![1, 2, b'a' + 3]);
                assert_eq!(c.earlier_ids(), vec!["p1".to_string(), "p2".to_string()]);
            }
            other => panic!("{other:?}"),
        }
        assert!(r.take_dropped().is_empty());
    }

    #[test]
    fn old_and_excess_partials_are_dropped() {
        let start: Millis = 1_000_000;
        let mut r = Reassembler::new(2, 60_000);
        add(&mut r, 1, 2, 1, start);
        add(&mut r, 2, 2, 1, start + 1_000);
        add(&mut r, 3, 2, 1, start + 2_000);
        assert_eq!(r.len(), 2, "the oldest partial made room");
        assert_eq!(r.take_dropped(), vec![dropped(&["p1-1"], DropCause::TooMany)]);
        add(&mut r, 4, 2, 1, start + 120_000);
        assert_eq!(r.len(), 1, "partials past their age are gone");
        let mut gone = r.take_dropped();
        gone.sort_by(|a, b| a.part_ids.cmp(&b.part_ids));
        assert_eq!(
            gone,
            vec![
                dropped(&["p2-1"], DropCause::TooOld),
                dropped(&["p3-1"], DropCause::TooOld)
            ]
        );
    }

    #[test]
    fn a_cancelled_message_is_taken_out_by_any_of_its_parts_ids_for_its_own_account_only() {
        let mut r = Reassembler::new(10, 60_000);
        add(&mut r, 1, 3, 1, 0);
        add(&mut r, 1, 3, 3, 0);
        add(&mut r, 2, 2, 1, 0);
        assert_eq!(r.cancel("another", "p1-3"), None);
        assert_eq!(r.cancel("esme", "p1-2"), None, "never came");
        assert_eq!(
            r.cancel("esme", "p1-3"),
            Some(dropped(&["p1-1", "p1-3"], DropCause::Cancelled))
        );
        assert_eq!(r.len(), 1);
        assert!(r.take_dropped().is_empty(), "told to the canceller, not as dropped");
    }

    fn add_bytes(r: &mut Reassembler<()>, reference: u16, seq: u8, len: usize, now: Millis) -> Added<()> {
        r.add(key(reference), 3, seq, vec![b'x'; len], (), now, || {
            format!("p{reference}-{seq}")
        })
    }

    #[test]
    fn partial_messages_hold_at_most_their_byte_limits() {
        let mut r = Reassembler::new(10, 60_000).with_bytes(10, 6);
        assert!(matches!(add_bytes(&mut r, 1, 1, 4, 0), Added::Buffered { .. }));
        assert!(
            matches!(add_bytes(&mut r, 1, 2, 3, 0), Added::TooLong),
            "7 > 6 in one message"
        );
        assert!(
            matches!(add_bytes(&mut r, 1, 1, 6, 0), Added::Buffered { .. }),
            "a resent part replaces"
        );
        assert_eq!((r.len(), r.bytes()), (1, 6));
        add_bytes(&mut r, 2, 1, 4, 1);
        assert!(r.take_dropped().is_empty(), "10 fit");
        add_bytes(&mut r, 3, 1, 1, 2);
        assert_eq!(
            r.take_dropped(),
            vec![dropped(&["p1-1"], DropCause::TooMany)],
            "the oldest made room"
        );
        assert_eq!((r.len(), r.bytes()), (2, 5));
        let Added::Complete(done) = ({
            add_bytes(&mut r, 2, 2, 1, 3);
            add_bytes(&mut r, 2, 3, 1, 3)
        }) else {
            panic!("three parts make the message");
        };
        assert_eq!(done.user_data().len(), 6);
        assert_eq!((r.len(), r.bytes()), (1, 1), "a completed message holds nothing");
        assert_eq!(
            r.cancel("esme", "p3-1").map(|d| d.part_ids),
            Some(vec!["p3-1".to_string()])
        );
        assert_eq!((r.len(), r.bytes()), (0, 0));
    }

    #[test]
    fn parts_taken_back_after_a_restart_keep_to_the_limits_too() {
        let mut r = Reassembler::new(2, 60_000).with_bytes(10, 6);
        for (reference, arrived) in [(1u16, 30), (2, 10), (3, 20)] {
            let part = Part {
                seq: 1,
                user_data: vec![0; 3],
                meta: (),
                part_id: format!("k{reference}"),
            };
            r.keep(key(reference), 3, part, arrived);
        }
        assert_eq!(
            r.take_dropped(),
            vec![dropped(&["k2"], DropCause::TooMany)],
            "the oldest"
        );
        assert_eq!((r.len(), r.bytes()), (2, 6));
    }

    fn dropped(ids: &[&str], cause: DropCause) -> Dropped {
        Dropped {
            part_ids: ids.iter().map(|id| id.to_string()).collect(),
            cause,
        }
    }

    #[test]
    fn a_message_started_over_drops_its_parts_and_the_deadline_is_its_age_limit() {
        let start: Millis = 1_000_000;
        let mut r = Reassembler::new(10, 60_000);
        add(&mut r, 1, 3, 1, start);
        add(&mut r, 1, 3, 2, start + 5_000);
        assert_eq!(r.deadline(&key(1)), Some(start + 60_000), "counted from the first part");
        add(&mut r, 1, 2, 1, start + 10_000);
        assert_eq!(
            r.take_dropped(),
            vec![dropped(&["p1-1", "p1-2"], DropCause::StartedOver)]
        );
        assert_eq!(r.deadline(&key(1)), Some(start + 70_000), "the new message's own");
        r.expire(start + 69_999);
        assert!(r.take_dropped().is_empty());
        r.expire(start + 70_000);
        assert_eq!(r.take_dropped(), vec![dropped(&["p1-1"], DropCause::TooOld)]);
        assert_eq!(r.deadline(&key(1)), None);
    }
}

//! A cap on how many records of one kind are kept: past it the oldest go,
//! a few at a time, as new ones come. The delivery log, the SMS network's
//! records, the OTP core's finished OTPs, the mail capture, its greylist
//! and the status callbacks' outbox each keep one.
//!
//! Removals are not synced on their own: a removal a crash undoes is made
//! again by a later one. Whoever finds another caller removing goes on
//! without waiting: waiting for the one remover queued every answer behind
//! it (the benchmark soak's p99 rose from 0.2 to 2.7 s).

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Batch, Result, Store, Tree};

/// How far past its cap a kind may go before a turn comes: one turn then
/// removes them together, so finding the oldest (a scan from the start of
/// a tree) is paid once for many. A sixty-fourth of the cap, at most this.
pub const SLACK: usize = 16;

/// Most records one turn removes: more than the slack, so removal catches
/// up with creation even when some callers find the remover busy.
pub const BATCH: usize = 4 * SLACK;

/// How far into the oldest records one turn looks when some of them must
/// stay (a message still pending, a code that can still be used); as far
/// again past them when that did not find enough (see [`Retention`]).
pub const SCAN: usize = 64;

/// Each turn looks at the oldest records first. When too many of those
/// must stay (a phone off for days holds every message sent to it), it
/// goes on past them from where the previous such walk stopped, back to
/// the start once it reaches the newest: over a few turns it reaches
/// whatever can go, however long the run of records that stay, and each
/// turn still reads a bounded number of keys.
///
/// A turn reads the oldest records from past the last key the previous
/// turn read, not from the start of the tree. Read from the start, every
/// turn went again over the records that had to stay (messages a carrier
/// retries held forty to sixty of them at the head in the SMPP benchmark)
/// and over the keys just removed, which are in sled until the next
/// checkpoint drain: a third of the SMSC's CPU once the log was full.
/// What a turn passed over comes back when its owner says it may go now
/// ([`Retention::may_go`]: a message that became final), and when turns
/// have removed a sixty-fourth of the cap since the oldest were last read
/// from the start: then a turn reads from the start again. So what is
/// kept is the newest records give or take that sixty-fourth, and a small
/// cap reads from the start every turn. That turn also finds a key written
/// below the others late (ids are taken before their write).
///
/// A turn that removed nothing (everything it read must stay: a load test
/// that issues more codes in ten minutes than the cap and verifies none)
/// makes the next one wait for more records to come, twice as many after
/// each such turn, up to [`SLACK`]; one that removes, or a record its
/// owner says may go, ends the wait. Taken on every new record, those
/// turns read a couple of hundred records each for nothing, and issuing
/// ran 30% slower. A walk past a long run of records that stay still
/// reads a dozen keys for each new record, so it gets past ten thousand
/// of them within a thousand new records.
pub struct Retention {
    keep: AtomicUsize,
    count: AtomicUsize,
    /// Records added so far, whatever went since.
    added: AtomicUsize,
    /// No turn is due until `added` reaches this (after turns that removed
    /// nothing), nor is one waited for when it is 0.
    quiet_until: AtomicUsize,
    /// How many additions the last wait lasted.
    quiet_for: AtomicUsize,
    /// One remover at a time.
    removing: tokio::sync::Mutex<()>,
    /// Where the walk past the oldest records stopped last.
    walked_to: std::sync::Mutex<Option<String>>,
    /// Where the next turn reads the oldest keys from.
    head: std::sync::Mutex<Head>,
}

impl Retention {
    /// Keeps `keep` (at least one) of the `count` records there are now.
    pub fn new(keep: usize, count: usize) -> Retention {
        Retention {
            keep: AtomicUsize::new(keep.max(1)),
            count: AtomicUsize::new(count),
            added: AtomicUsize::new(0),
            quiet_until: AtomicUsize::new(0),
            quiet_for: AtomicUsize::new(0),
            removing: tokio::sync::Mutex::new(()),
            walked_to: std::sync::Mutex::new(None),
            head: std::sync::Mutex::new(Head::default()),
        }
    }

    pub fn keep(&self, keep: usize) {
        self.keep.store(keep.max(1), Ordering::SeqCst);
    }

    pub fn added(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
        self.added.fetch_add(1, Ordering::SeqCst);
    }

    /// The record under `key` may go now (it became final): when a turn
    /// passed it over, the next turn offers it first.
    pub fn may_go(&self, key: &str) {
        let mut head = self.lock_head();
        if head.after.as_deref().is_some_and(|after| key <= after) && head.ready.len() < BATCH {
            head.ready.push(key.to_string());
            self.quiet_until.store(0, Ordering::SeqCst);
        }
    }

    /// One record went some other way (an explicit delete).
    pub fn removed(&self) {
        let _ = self
            .count
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| Some(n.saturating_sub(1)));
    }

    /// Nothing is left, whatever the count said.
    pub fn emptied(&self) {
        self.count.store(0, Ordering::SeqCst);
    }

    /// How many more records there are than the cap.
    fn excess(&self) -> usize {
        self.count
            .load(Ordering::SeqCst)
            .saturating_sub(self.keep.load(Ordering::SeqCst))
    }

    /// The remover's turn: `Some` when the count is past the cap by more
    /// than the slack and nobody else is removing; the turn lasts as long
    /// as the guard and should remove [`Retention::excess`] records (at
    /// most [`BATCH`]).
    fn turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        let slack = (self.keep.load(Ordering::SeqCst) / 64).min(SLACK);
        if self.excess() <= slack || self.added.load(Ordering::SeqCst) < self.quiet_until.load(Ordering::SeqCst) {
            return None;
        }
        self.removing.try_lock().ok()
    }

    /// One turn over the oldest keys of `tree`, when one is due: `pick`
    /// adds a key's removals to the batch and answers a guard that keeps
    /// the record as it is until the batch is in, or `None` to pass the
    /// key over (still in use, or busy). The removals go in as one write.
    /// A failure is logged, naming `what`: the write that called this has
    /// already succeeded, and a later turn tries again.
    pub fn remove_oldest<G>(
        &self,
        what: &'static str,
        store: &Store,
        tree: &Tree,
        pick: impl FnMut(&str, &mut Batch) -> Result<Option<G>>,
    ) {
        if let Err(error) = self.try_remove_oldest(store, tree, pick) {
            tracing::warn!(%error, what, "retention could not remove old records");
        }
    }

    fn try_remove_oldest<G>(
        &self,
        store: &Store,
        tree: &Tree,
        mut pick: impl FnMut(&str, &mut Batch) -> Result<Option<G>>,
    ) -> Result<()> {
        let Some(_turn) = self.turn() else {
            return Ok(());
        };
        let due = self.excess().min(BATCH);
        let mut batch = store.batch();
        let mut held = Vec::new();
        let (ready, mut from) = self.head_from(self.keep.load(Ordering::SeqCst) / 64);
        let ready = ready.into_iter().filter_map(|key| match tree.contains(&key) {
            Ok(true) => Some(Ok(key)),
            Ok(false) => None,
            Err(e) => Some(Err(e)),
        });
        pick_until(due, ready, &mut held, &mut batch, &mut pick)?;
        let head = loop {
            let keys = tree.keys_from(from.as_deref()).take(due + SCAN);
            let head = pick_until(due, keys, &mut held, &mut batch, &mut pick)?;
            match (&head.last_read, from) {
                // Nothing past the last turn: a key may still be below.
                (None, Some(_)) if held.len() < due => from = None,
                (None, None) if held.len() < due => {
                    self.emptied();
                    break head;
                }
                _ => break head,
            }
        };
        let mut last_read = head.last_read;
        if held.len() < due {
            if let Some(head_end) = last_read.clone() {
                let further = self.walk_on(tree, &head_end)?;
                let walked = pick_until(due, further.into_iter().map(Ok), &mut held, &mut batch, &mut pick)?;
                // The next turn starts past the walk too (unless it went
                // back to the start).
                last_read = last_read.max(walked.last_read);
            }
        }
        store.apply(batch)?;
        let mut next = self.lock_head();
        next.removed += held.len();
        if last_read.is_some() {
            next.after = last_read;
        }
        drop(next);
        if held.is_empty() {
            let wait = (self.quiet_for.load(Ordering::SeqCst) * 2).clamp(1, SLACK);
            self.quiet_for.store(wait, Ordering::SeqCst);
            self.quiet_until
                .store(self.added.load(Ordering::SeqCst) + wait, Ordering::SeqCst);
        } else {
            self.quiet_for.store(0, Ordering::SeqCst);
            self.quiet_until.store(0, Ordering::SeqCst);
        }
        for _ in &held {
            self.removed();
        }
        Ok(())
    }

    /// What this turn offers first, and where it reads the oldest keys
    /// from: past the last turn's, or (`None`) the start of the tree once
    /// turns have removed `rescan_after` records since it was.
    fn head_from(&self, rescan_after: usize) -> (Vec<String>, Option<String>) {
        let mut head = self.lock_head();
        if head.removed >= rescan_after {
            *head = Head::default();
        }
        (std::mem::take(&mut head.ready), head.after.clone())
    }

    fn lock_head(&self) -> std::sync::MutexGuard<'_, Head> {
        self.head.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next [`SCAN`] keys past the oldest ones (which end at
    /// `head_end`), from where the last walk stopped; back to the start
    /// once it reached the newest.
    fn walk_on(&self, tree: &Tree, head_end: &str) -> Result<Vec<String>> {
        let mut walked_to = self.walked_to.lock().unwrap_or_else(|e| e.into_inner());
        let from = match walked_to.take() {
            Some(key) if key.as_str() > head_end => key,
            _ => head_end.to_string(),
        };
        let further = tree.keys_after(&from, SCAN)?;
        if further.len() == SCAN {
            *walked_to = further.last().cloned();
        }
        Ok(further)
    }
}

/// Where a turn starts (see [`Retention`]).
#[derive(Default)]
struct Head {
    /// The last key the previous turn read from the oldest ones.
    after: Option<String>,
    /// Keys passed over that may go now, offered first.
    ready: Vec<String>,
    /// Records removed since the oldest were read from the start.
    removed: usize,
}

/// What [`pick_until`] read.
struct Picked {
    /// The last key offered.
    last_read: Option<String>,
}

/// Offers `keys` to `pick` in order until `held` has `due` guards.
fn pick_until<G>(
    due: usize,
    keys: impl Iterator<Item = Result<String>>,
    held: &mut Vec<G>,
    batch: &mut Batch,
    pick: &mut impl FnMut(&str, &mut Batch) -> Result<Option<G>>,
) -> Result<Picked> {
    let mut picked = Picked { last_read: None };
    for key in keys {
        if held.len() == due {
            break;
        }
        let key = key?;
        if let Some(guard) = pick(&key, batch)? {
            held.push(guard);
        }
        picked.last_read = Some(key);
    }
    Ok(picked)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tree of `n` records keyed `00000`, `00001` and so on.
    fn numbered(store: &Store, name: &str, n: usize) -> Tree {
        let tree = store.tree(name).unwrap();
        for i in 0..n {
            tree.put(&format!("{i:05}"), &i).unwrap();
        }
        tree
    }

    #[test]
    fn a_large_cap_waits_for_its_slack_then_removes_it_all() {
        let r = Retention::new(6400, 6400 + SLACK);
        assert!(r.turn().is_none(), "within the slack");
        r.added();
        assert!(r.turn().is_some());
        assert_eq!(r.excess(), SLACK + 1);
    }

    /// The oldest 200 records stay (still in use): the turns reach the 100
    /// after them anyway, and never remove one that stays.
    #[test]
    fn records_past_a_long_run_that_stays_still_go() {
        let store = Store::temporary().unwrap();
        let tree = numbered(&store, "t", 300);
        let r = Retention::new(10, 300);
        // Turns come with new records; those that remove nothing wait for
        // more of them.
        for _ in 0..40 {
            r.added();
            r.remove_oldest("test records", &store, &tree, |key, batch| {
                if key < "00200" {
                    return Ok(None);
                }
                batch.remove(&tree, key);
                Ok(Some(()))
            });
        }
        assert_eq!(tree.len(), 200);
        assert_eq!(tree.first_keys(1).unwrap(), vec!["00000".to_string()]);
        assert_eq!(tree.keys_after("00199", 1).unwrap(), Vec::<String>::new());
        // Once they may go (their owner says so), the oldest go first
        // again: a cap this small reads from the start on every turn.
        r.may_go("00000");
        r.remove_oldest("test records", &store, &tree, |key, batch| {
            batch.remove(&tree, key);
            Ok(Some(()))
        });
        assert_eq!(tree.first_keys(1).unwrap(), vec![format!("{:05}", BATCH)]);
    }

    /// A turn reads from past the last key read, so a key written below
    /// it later (its id taken before its write) waits for the turn that
    /// reads from the start: the one after a sixty-fourth of the cap went.
    /// One below it that its owner says may go goes with the next turn.
    #[test]
    fn a_key_written_late_below_the_ones_read_still_goes() {
        let store = Store::temporary().unwrap();
        let tree = store.tree("t").unwrap();
        let keep = 64 * 100;
        let r = Retention::new(keep, 0);
        let mut next = 100;
        let mut add = |n: usize| {
            for _ in 0..n {
                tree.put(&format!("{next:05}"), &next).unwrap();
                r.added();
                next += 1;
            }
        };
        add(keep + SLACK + 1);
        let turn = |r: &Retention| {
            r.remove_oldest("test records", &store, &tree, |key, batch| {
                batch.remove(&tree, key);
                Ok(Some(()))
            })
        };
        turn(&r);
        assert_eq!(tree.first_keys(1).unwrap(), vec![format!("{:05}", 100 + SLACK + 1)]);
        for late in ["00050", "00060"] {
            tree.put(late, &0).unwrap();
            r.added();
        }
        r.may_go("00060");
        let mut removed = SLACK + 1;
        while removed < 100 {
            add(SLACK + 1);
            turn(&r);
            removed += SLACK + 1;
            assert!(!tree.contains("00060").unwrap(), "said to go: offered first");
            assert!(tree.contains("00050").unwrap(), "read from past the last turn");
        }
        add(SLACK + 1);
        turn(&r);
        assert!(!tree.contains("00050").unwrap(), "read from the start again");
        assert_eq!(tree.len(), keep);
    }

    /// Every record must stay: turns come less and less often, up to one
    /// every [`SLACK`] new records, instead of one per record; once records
    /// may go, they go within a wait.
    #[test]
    fn turns_that_remove_nothing_wait_for_more_records() {
        let store = Store::temporary().unwrap();
        let tree = numbered(&store, "t", 1_000);
        let r = Retention::new(100, 1_000);
        let mut read = 0;
        for _ in 0..2_000 {
            r.added();
            r.remove_oldest("test records", &store, &tree, |_, _| {
                read += 1;
                Ok(None::<()>)
            });
        }
        assert_eq!(tree.len(), 1_000);
        // About 2,000 / 16 turns of at most three times 64 keys each; a
        // turn per record read over 300,000.
        assert!(read < 30_000, "{read} keys read");
        let mut removed = false;
        for _ in 0..SLACK {
            r.added();
            r.remove_oldest("test records", &store, &tree, |key, batch| {
                batch.remove(&tree, key);
                removed = true;
                Ok(Some(()))
            });
        }
        assert!(removed, "a turn came within {SLACK} new records");
        assert!(tree.len() < 1_000);
        // A record its owner says may go ends the wait at once.
        let tree = numbered(&store, "u", 1_000);
        let r = Retention::new(100, 1_000);
        for _ in 0..200 {
            r.added();
            r.remove_oldest("test records", &store, &tree, |_, _| Ok(None::<()>));
        }
        r.added();
        assert!(r.turn().is_none(), "waiting");
        let first = tree.first_keys(1).unwrap().remove(0);
        r.may_go(&first);
        assert!(r.turn().is_some());
    }

    #[test]
    fn a_turn_only_past_the_cap_and_one_at_a_time() {
        let r = Retention::new(2, 2);
        assert!(r.turn().is_none(), "at the cap nothing is due");
        r.added();
        let turn = r.turn();
        assert!(turn.is_some());
        assert!(r.turn().is_none(), "a second remover does not get a turn");
        r.removed();
        drop(turn);
        assert!(r.turn().is_none());
        r.emptied();
        r.removed();
        assert_eq!(r.excess(), 0, "the count never wraps below zero");
    }
}

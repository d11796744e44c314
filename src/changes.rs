//! Long polls: a reader waits until something it reads holds, woken by
//! the writers after each durable change to what it waits on, instead of
//! reading in a loop. The delivery log's `wait` (by message), and the
//! handsets' and mailboxes' `?wait=` (by number or address).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::clock::{parse_rfc3339, rfc3339, Millis};

/// Where a reader's last read ended (`?after=`): a time, or the id of the
/// last message it read. The id is exact where times tie, as they do
/// while a virtual clock stands still.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum After {
    /// Only what arrived later than this.
    Time(Millis),
    /// Only what arrived after this message. One no longer there (the
    /// inbox emptied, or the message gone with retention, oldest first)
    /// leaves everything there newer.
    Message(String),
}

impl After {
    /// An RFC 3339 time if it reads as one, else a message id.
    pub fn parse(text: &str) -> Option<After> {
        let text = text.trim();
        if text.is_empty() {
            return None;
        }
        Some(parse_rfc3339(text).map_or_else(|| After::Message(text.to_string()), After::Time))
    }

    /// What arrived after this of `items` (oldest first), given each one's
    /// id and arrival.
    pub fn keep_newer<T>(&self, mut items: Vec<T>, id: impl Fn(&T) -> &str, at: impl Fn(&T) -> Millis) -> Vec<T> {
        match self {
            After::Time(t) => {
                items.retain(|item| at(item) > *t);
                items
            }
            After::Message(last) => match items.iter().rposition(|item| id(item) == last) {
                Some(read) => items.split_off(read + 1),
                None => items,
            },
        }
    }
}

impl std::fmt::Display for After {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            After::Time(t) => write!(f, "after {}", rfc3339(*t)),
            After::Message(id) => write!(f, "after message {id}"),
        }
    }
}

/// Changes to things named by a key (a message id, a phone number, an
/// address), for readers waiting on one of them. A change wakes only the
/// readers of its key, so a waiting suite costs nothing to the traffic it
/// does not wait on; with nobody waiting, telling a change costs one
/// atomic read. Cheap to clone, all clones share one.
#[derive(Clone, Default)]
pub struct Changes(Arc<Readers>);

#[derive(Default)]
struct Readers {
    /// How many wait now, over all keys.
    count: AtomicUsize,
    by_key: Mutex<HashMap<String, Key>>,
}

struct Key {
    notify: Arc<Notify>,
    readers: usize,
}

impl Changes {
    /// Wakes the readers waiting on `key` now. Call it once the change is
    /// durable, so that a reader never sees what a crash could still take
    /// back.
    pub fn changed(&self, key: &str) {
        if self.0.count.load(Ordering::Acquire) == 0 {
            return;
        }
        if let Some(k) = self.0.by_key.lock().unwrap_or_else(|e| e.into_inner()).get(key) {
            k.notify.notify_waiters();
        }
    }

    /// Reads with `check` until it finds something or `timeout` (real
    /// time) passes; `None` then. Woken by each change to `key`. A change
    /// made between a read and the wait that follows it is not missed: the
    /// wait is registered before each read.
    pub async fn wait_until<T, E>(
        &self,
        key: &str,
        timeout: Duration,
        mut check: impl FnMut() -> Result<Option<T>, E>,
    ) -> Result<Option<T>, E> {
        let deadline = tokio::time::Instant::now() + timeout;
        let reader = Reader::new(&self.0, key);
        loop {
            let notified = reader.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(found) = check()? {
                return Ok(Some(found));
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(None);
            }
        }
    }

    /// How many readers wait now, over all keys.
    pub fn waiting(&self) -> usize {
        self.0.count.load(Ordering::Acquire)
    }
}

/// One reader waiting on a key, counted until it is dropped.
struct Reader<'a> {
    readers: &'a Readers,
    key: String,
    notify: Arc<Notify>,
}

impl<'a> Reader<'a> {
    fn new(readers: &'a Readers, key: &str) -> Reader<'a> {
        let mut by_key = readers.by_key.lock().unwrap_or_else(|e| e.into_inner());
        let entry = by_key.entry(key.to_string()).or_insert_with(|| Key {
            notify: Arc::new(Notify::new()),
            readers: 0,
        });
        entry.readers += 1;
        readers.count.fetch_add(1, Ordering::AcqRel);
        Reader {
            readers,
            key: key.to_string(),
            notify: entry.notify.clone(),
        }
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        let mut by_key = self.readers.by_key.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = by_key.get_mut(&self.key) {
            entry.readers -= 1;
            if entry.readers == 0 {
                by_key.remove(&self.key);
            }
        }
        self.readers.count.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn after_a_time_keeps_later_arrivals_and_after_an_id_what_came_after_it() {
        let items = vec![("a", 10), ("b", 20), ("c", 20), ("d", 30)];
        let newer = |after: &str| {
            let after = After::parse(after).expect("after");
            let kept = after.keep_newer(items.clone(), |i| i.0, |i| i.1);
            kept.into_iter().map(|i| i.0).collect::<Vec<_>>()
        };
        let at_20 = rfc3339(20);
        assert_eq!(After::parse(&at_20), Some(After::Time(20)));
        assert_eq!(newer(&at_20), ["d"]);
        // Two arrivals at one instant: the id tells them apart.
        assert_eq!(newer("b"), ["c", "d"]);
        assert_eq!(newer("d"), Vec::<&str>::new());
        // Gone from the inbox: everything there came after it.
        assert_eq!(newer("gone"), ["a", "b", "c", "d"]);
        assert_eq!(After::parse(" "), None);
    }

    #[tokio::test]
    async fn a_reader_wakes_on_each_change_to_its_key_only() {
        let changes = Changes::default();
        let value = Arc::new(AtomicU32::new(0));
        let (writer, seen) = (changes.clone(), value.clone());
        // One thread: the writer runs only while the reader waits.
        let wrote = tokio::spawn(async move {
            for n in 1..=3 {
                seen.store(n, Ordering::SeqCst);
                writer.changed("other");
                tokio::task::yield_now().await;
                writer.changed("mine");
                tokio::task::yield_now().await;
            }
        });
        let mut reads = 0;
        let found = changes
            .wait_until("mine", Duration::from_secs(60), || {
                reads += 1;
                Ok::<_, ()>(Some(value.load(Ordering::SeqCst)).filter(|n| *n == 2))
            })
            .await;
        // Read once at first, then once per change to "mine"; woken by
        // "other" too, it would have read 2 a change earlier, in 4 reads.
        assert_eq!((found, reads), (Ok(Some(2)), 3));
        wrote.await.expect("writer");
        assert_eq!(changes.waiting(), 0, "a reader that is done is forgotten");

        let never = changes
            .wait_until("mine", Duration::ZERO, || Ok::<Option<u32>, ()>(None))
            .await;
        assert_eq!(never, Ok(None));
        assert!(changes.0.by_key.lock().unwrap().is_empty());
    }
}

//! Durable storage: the only module that knows sled.
//!
//! Everything otpgate keeps is a JSON value in a named tree. Writers call
//! [`Store::flush`] before they acknowledge anything, so an acknowledged
//! state survives a crash. Concurrent flushes are grouped here (group
//! commit): one flush runs at a time on a blocking thread, and every caller
//! that wrote before a flush started is answered by that flush. It never
//! uses sled's `flush_async`, which deadlocks when many callers flush at
//! once (sled issue #1308: every thread of sled's pool waits for a write
//! queued behind them on the same pool).

use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage: {0}")]
    Db(#[from] sled::Error),
    #[error("stored value is not readable: {0}")]
    Corrupt(#[from] serde_json::Error),
    #[error("the value changed under a concurrent update")]
    Conflict,
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// sled's page cache. Its default (1 GiB) let a server under steady load
/// grow for as long as its data did (the benchmark's memory soak); the
/// working set (recent messages, members, OTPs) is far smaller, and older
/// pages come back from the OS's file cache when read.
const CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// The database handle; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    commits: Arc<Commits>,
}

/// The group commit shared by every clone of one [`Store`].
struct Commits {
    state: Mutex<CommitState>,
    /// How many flushes have finished (`u64::MAX` once one failed); callers
    /// wait here for the flush that covers their writes.
    finished: tokio::sync::watch::Sender<u64>,
}

#[derive(Default)]
struct CommitState {
    /// Flushes started so far; the one running, if any, is number `started`.
    started: u64,
    running: bool,
    /// Someone asked while a flush was running: run another when it ends.
    again: bool,
    /// After a failed flush sled refuses further writes; every caller from
    /// then on gets the error.
    failed: Option<sled::Error>,
}

impl Commits {
    fn new() -> Arc<Commits> {
        Arc::new(Commits {
            state: Mutex::new(CommitState::default()),
            finished: tokio::sync::watch::channel(0).0,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, CommitState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs flushes back to back on a blocking thread while anyone waits.
    fn run(&self, db: &sled::Db) {
        loop {
            let result = db.flush();
            let mut state = self.state();
            let done = match result {
                Ok(_) => state.started,
                Err(e) => {
                    state.failed.get_or_insert(e);
                    u64::MAX
                }
            };
            let more = state.again && state.failed.is_none();
            state.again = false;
            if more {
                state.started += 1;
            } else {
                state.running = false;
            }
            drop(state);
            self.finished.send_replace(done);
            if !more {
                return;
            }
        }
    }
}

/// One named tree of JSON values.
#[derive(Clone)]
pub struct Tree {
    tree: sled::Tree,
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store> {
        let db = sled::Config::new()
            .path(dir.join("db"))
            .cache_capacity(CACHE_BYTES)
            .open()?;
        Ok(Store {
            db,
            commits: Commits::new(),
        })
    }

    /// A throwaway in-memory store for unit tests.
    pub fn temporary() -> Result<Store> {
        let db = sled::Config::new().temporary(true).open()?;
        Ok(Store {
            db,
            commits: Commits::new(),
        })
    }

    pub fn tree(&self, name: &str) -> Result<Tree> {
        Ok(Tree {
            tree: self.db.open_tree(name)?,
        })
    }

    /// A number unique in this database, increasing, surviving restarts.
    pub fn next_id(&self) -> Result<u64> {
        Ok(self.db.generate_id()? + 1)
    }

    /// Makes every write so far durable. Concurrent callers share flushes:
    /// a caller waits for the first flush that starts after it asked.
    pub async fn flush(&self) -> Result<()> {
        let mut finished = self.commits.finished.subscribe();
        let (target, lead) = {
            let mut state = self.commits.state();
            if let Some(e) = &state.failed {
                return Err(e.clone().into());
            }
            if state.running {
                // The running flush may have started before our writes.
                state.again = true;
                (state.started + 1, false)
            } else {
                state.running = true;
                state.started += 1;
                (state.started, true)
            }
        };
        if lead {
            let db = self.db.clone();
            let commits = self.commits.clone();
            tokio::task::spawn_blocking(move || commits.run(&db));
        }
        // The sender lives as long as `self`, so the channel cannot close.
        let _ = finished.wait_for(|&done| done >= target).await;
        match &self.commits.state().failed {
            Some(e) => Err(e.clone().into()),
            None => Ok(()),
        }
    }

    /// Writes several trees at once, all or nothing.
    pub fn batch(&self) -> Batch {
        Batch { ops: Vec::new() }
    }

    pub fn apply(&self, batch: Batch) -> Result<()> {
        use sled::Transactional;
        let mut trees: Vec<sled::Tree> = Vec::new();
        for (tree, _, _) in &batch.ops {
            if !trees.iter().any(|t| t.name() == tree.name()) {
                trees.push(tree.clone());
            }
        }
        let refs: Vec<&sled::Tree> = trees.iter().collect();
        refs.as_slice()
            .transaction(|tx| {
                for (tree, key, value) in &batch.ops {
                    let index = trees.iter().position(|t| t.name() == tree.name()).unwrap_or(0);
                    match value {
                        Some(v) => {
                            tx[index].insert(key.as_slice(), v.as_slice())?;
                        }
                        None => {
                            tx[index].remove(key.as_slice())?;
                        }
                    }
                }
                Ok(())
            })
            .map_err(|e: sled::transaction::TransactionError<()>| match e {
                sled::transaction::TransactionError::Storage(e) => StoreError::Db(e),
                sled::transaction::TransactionError::Abort(()) => StoreError::Conflict,
            })
    }
}

/// Writes gathered for [`Store::apply`].
pub struct Batch {
    ops: Vec<(sled::Tree, Vec<u8>, Option<Vec<u8>>)>,
}

impl Batch {
    pub fn put<T: Serialize>(&mut self, tree: &Tree, key: &str, value: &T) -> Result<()> {
        self.ops.push((
            tree.tree.clone(),
            key.as_bytes().to_vec(),
            Some(serde_json::to_vec(value)?),
        ));
        Ok(())
    }

    pub fn remove(&mut self, tree: &Tree, key: &str) {
        self.ops.push((tree.tree.clone(), key.as_bytes().to_vec(), None));
    }
}

impl Tree {
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        match self.tree.get(key.as_bytes())? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    pub fn put<T: Serialize>(&self, key: &str, value: &T) -> Result<()> {
        self.tree.insert(key.as_bytes(), serde_json::to_vec(value)?)?;
        Ok(())
    }

    pub fn remove(&self, key: &str) -> Result<()> {
        self.tree.remove(key.as_bytes())?;
        Ok(())
    }

    pub fn contains(&self, key: &str) -> Result<bool> {
        Ok(self.tree.contains_key(key.as_bytes())?)
    }

    /// Replaces the value at `key` only if it still equals `expected`
    /// (serialised); the caller retries on [`StoreError::Conflict`].
    pub fn compare_and_swap<T: Serialize>(&self, key: &str, expected: Option<&T>, new: &T) -> Result<()> {
        let old = match expected {
            Some(v) => Some(serde_json::to_vec(v)?),
            None => None,
        };
        let new = serde_json::to_vec(new)?;
        match self.tree.compare_and_swap(key.as_bytes(), old, Some(new))? {
            Ok(()) => Ok(()),
            Err(_) => Err(StoreError::Conflict),
        }
    }

    /// Every value whose key starts with `prefix`, in key order.
    pub fn scan_prefix<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<(String, T)>> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(prefix.as_bytes()) {
            let (k, v) = item?;
            out.push((String::from_utf8_lossy(&k).into_owned(), serde_json::from_slice(&v)?));
        }
        Ok(out)
    }

    /// Every key starting with `prefix`, in key order (values not read).
    pub fn keys_with_prefix(&self, prefix: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(prefix.as_bytes()) {
            let (k, _) = item?;
            out.push(String::from_utf8_lossy(&k).into_owned());
        }
        Ok(out)
    }

    /// Values in reverse key order, starting below `before` when given.
    pub fn iter_rev<T: DeserializeOwned>(&self, before: Option<&str>, limit: usize) -> Result<Vec<(String, T)>> {
        let mut out = Vec::new();
        let iter = match before {
            Some(b) => self.tree.range(..b.as_bytes().to_vec()),
            None => self.tree.range::<Vec<u8>, _>(..),
        };
        for item in iter.rev() {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item?;
            out.push((String::from_utf8_lossy(&k).into_owned(), serde_json::from_slice(&v)?));
        }
        Ok(out)
    }

    pub fn len(&self) -> usize {
        self.tree.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    /// The first key in key order, for retention (oldest first).
    pub fn first_key(&self) -> Result<Option<String>> {
        Ok(self
            .tree
            .first()?
            .map(|(k, _)| String::from_utf8_lossy(&k).into_owned()))
    }

    pub fn clear(&self) -> Result<()> {
        self.tree.clear()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// sled's `flush_async` deadlocked under a few dozen concurrent callers
    /// (the benchmark's SMPP run never got an answer); the group commit
    /// answers every one of them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_concurrent_flushes_all_finish() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let tree = store.tree("t").unwrap();
        let mut tasks = Vec::new();
        for i in 0..256u32 {
            let (store, tree) = (store.clone(), tree.clone());
            tasks.push(tokio::spawn(async move {
                for j in 0..20u32 {
                    tree.put(&format!("{i}:{j}"), &j).unwrap();
                    store.flush().await.unwrap();
                }
            }));
        }
        let all = futures::future::join_all(tasks);
        let joined = tokio::time::timeout(std::time::Duration::from_secs(60), all)
            .await
            .expect("every flush finishes");
        assert!(joined.iter().all(std::result::Result::is_ok));
        assert_eq!(tree.len(), 256 * 20);
    }

    #[test]
    fn values_round_trip_and_scan_in_order() {
        let store = Store::temporary().unwrap();
        let tree = store.tree("t").unwrap();
        tree.put("a:2", &2u32).unwrap();
        tree.put("a:1", &1u32).unwrap();
        tree.put("b:1", &9u32).unwrap();
        let got: Vec<(String, u32)> = tree.scan_prefix("a:").unwrap();
        assert_eq!(got, vec![("a:1".into(), 1), ("a:2".into(), 2)]);
        let rev: Vec<(String, u32)> = tree.iter_rev(Some("b"), 10).unwrap();
        assert_eq!(rev[0].1, 2);
        assert!(tree.compare_and_swap("a:1", Some(&5u32), &6u32).is_err());
        tree.compare_and_swap("a:1", Some(&1u32), &6u32).unwrap();
        assert_eq!(tree.get::<u32>("a:1").unwrap(), Some(6));
    }
}

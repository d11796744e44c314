//! The write-ahead log that makes [`super::Store`] writes durable.
//!
//! Every write is applied to sled and appended to an in-memory buffer under
//! one lock, so the log holds the writes in the order sled saw them. A
//! writer thread takes the whole buffer, writes it to the current log file
//! and calls `fdatasync`: one sync acknowledges every write buffered before
//! it (group commit). sled itself is flushed only at checkpoints, on a
//! thread of their own: the writer starts a new file, the checkpoint
//! flushes sled (which now holds everything the old files hold) and
//! deletes them. At start-up the files left over are replayed into sled in
//! order; replaying a write sled already has is harmless, because records
//! carry whole values.
//!
//! A file is a sequence of records: `len: u32 LE`, `crc32(payload): u32
//! LE`, payload. A payload is one or more operations written together (a
//! batch is one record, so it replays all or nothing): `op: u8` (1 put,
//! 2 remove, 3 clear), the tree name and the key (each `u32 LE` length then
//! bytes) and, for a put, the value likewise. Replay stops at the first
//! record that is short or fails its checksum: the write the crash cut off,
//! never acknowledged.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the log is cut and sled flushed, at most, while writes come.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(2);
/// A log file this large is cut at once.
const CHECKPOINT_BYTES: u64 = 64 * 1024 * 1024;

const PUT: u8 = 1;
const REMOVE: u8 = 2;
const CLEAR: u8 = 3;

/// One write, as the log records it.
pub(super) enum Op<'a> {
    Put {
        tree: &'a [u8],
        key: &'a [u8],
        value: &'a [u8],
    },
    Remove {
        tree: &'a [u8],
        key: &'a [u8],
    },
    Clear {
        tree: &'a [u8],
    },
}

/// The log of one store; dropping the last handle stops its threads after
/// they have written what was buffered.
pub(super) struct Wal {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the writer: something was buffered, or the store is closing.
    wake: Condvar,
    /// The sequence number of the last durable write (`u64::MAX` once the
    /// log failed); callers of [`Wal::flush`] wait here.
    durable: tokio::sync::watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    /// Records applied to sled and not yet handed to the writer.
    buffer: Vec<u8>,
    /// The sequence number of the last write buffered.
    appended: u64,
    closing: bool,
    /// Once a write or sync failed, nothing more is acknowledged: the file
    /// may hold a hole, so later writes could not be replayed in order.
    failed: Option<String>,
}

/// Holds the log's lock while a write is applied to sled and recorded.
pub(super) struct Guard<'a> {
    state: MutexGuard<'a, State>,
    wake: &'a Condvar,
}

impl Guard<'_> {
    /// Records writes that sled has applied; they replay as one.
    pub(super) fn record(mut self, ops: &[Op<'_>]) {
        let mut payload = Vec::new();
        for op in ops {
            let (code, tree, key, value) = match op {
                Op::Put { tree, key, value } => (PUT, *tree, *key, Some(*value)),
                Op::Remove { tree, key } => (REMOVE, *tree, *key, None),
                Op::Clear { tree } => (CLEAR, *tree, &[][..], None),
            };
            payload.push(code);
            for part in [Some(tree), Some(key), value].into_iter().flatten() {
                payload.extend_from_slice(&(part.len() as u32).to_le_bytes());
                payload.extend_from_slice(part);
            }
        }
        let buffer = &mut self.state.buffer;
        buffer.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        buffer.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        buffer.extend_from_slice(&payload);
        self.state.appended += 1;
        self.wake.notify_one();
    }
}

impl Wal {
    /// Replays the log files in `dir` into `db`, flushes sled, removes
    /// them, and starts a new log.
    pub(super) fn open(dir: &Path, db: &sled::Db) -> io::Result<Wal> {
        fs::create_dir_all(dir)?;
        let files = log_files(dir)?;
        let mut replayed = 0usize;
        for (_, path) in &files {
            replayed += replay(&fs::read(path)?, db).map_err(io::Error::other)?;
        }
        if !files.is_empty() {
            db.flush().map_err(io::Error::other)?;
            for (_, path) in &files {
                fs::remove_file(path)?;
            }
            tracing::info!(records = replayed, files = files.len(), "replayed the write-ahead log");
        }
        let number = files.last().map_or(1, |(n, _)| n + 1);
        let file = create_log(dir, number)?;

        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            durable: tokio::sync::watch::channel(0).0,
        });
        let (cut_tx, cut_rx) = mpsc::channel::<u64>();
        let writer = {
            let (shared, dir) = (shared.clone(), dir.to_path_buf());
            std::thread::Builder::new()
                .name("otpgate-wal".into())
                .spawn(move || write_loop(&shared, &dir, file, number, &cut_tx))?
        };
        let checkpointer = {
            let (shared, dir, db) = (shared.clone(), dir.to_path_buf(), db.clone());
            std::thread::Builder::new()
                .name("otpgate-checkpoint".into())
                .spawn(move || checkpoint_loop(&shared, &dir, &db, &cut_rx))?
        };
        Ok(Wal {
            shared,
            threads: Mutex::new(vec![writer, checkpointer]),
        })
    }

    /// Takes the log's lock for one write; fails once the log has failed.
    pub(super) fn lock(&self) -> Result<Guard<'_>, String> {
        let state = self.shared.lock();
        if let Some(e) = &state.failed {
            return Err(e.clone());
        }
        Ok(Guard {
            state,
            wake: &self.shared.wake,
        })
    }

    /// Returns once every write recorded before the call is on disk.
    pub(super) async fn flush(&self) -> Result<(), String> {
        let target = self.shared.lock().appended;
        let mut durable = self.shared.durable.subscribe();
        // The sender lives as long as `self`, so the channel cannot close.
        let _ = durable.wait_for(|&done| done >= target).await;
        match &self.shared.lock().failed {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.wake.notify_all();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for thread in threads {
            let _ = thread.join();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fail(&self, e: &io::Error) {
        tracing::error!(error = %e, "the write-ahead log failed; nothing more is acknowledged");
        self.lock()
            .failed
            .get_or_insert_with(|| format!("write-ahead log: {e}"));
        self.durable.send_replace(u64::MAX);
    }
}

/// The writer thread: takes the buffer, writes and syncs it, answers the
/// waiters; cuts the file when a checkpoint is due.
fn write_loop(shared: &Shared, dir: &Path, mut file: File, mut number: u64, cut: &mpsc::Sender<u64>) {
    let mut cut_at = Instant::now() + CHECKPOINT_EVERY;
    let mut size = 0u64;
    loop {
        let (bytes, upto) = {
            let mut state = shared.lock();
            while state.buffer.is_empty() && !state.closing {
                state = shared.wake.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            if state.failed.is_some() {
                return;
            }
            if state.buffer.is_empty() {
                // Closing with everything written: a last checkpoint, so a
                // clean stop leaves no log to replay.
                let _ = cut.send(number);
                return;
            }
            (std::mem::take(&mut state.buffer), state.appended)
        };
        if let Err(e) = file.write_all(&bytes).and_then(|()| file.sync_data()) {
            shared.fail(&e);
            return;
        }
        shared.durable.send_replace(upto);
        size += bytes.len() as u64;
        if size >= CHECKPOINT_BYTES || Instant::now() >= cut_at {
            match create_log(dir, number + 1) {
                Ok(next) => {
                    file = next;
                    let _ = cut.send(number);
                    number += 1;
                    size = 0;
                    cut_at = Instant::now() + CHECKPOINT_EVERY;
                }
                Err(e) => {
                    shared.fail(&e);
                    return;
                }
            }
        }
    }
}

/// The checkpoint thread: once the writer has moved past a file, sled
/// holds every write in it; flush sled and the file can go.
fn checkpoint_loop(shared: &Shared, dir: &Path, db: &sled::Db, cuts: &mpsc::Receiver<u64>) {
    while let Ok(mut upto) = cuts.recv() {
        // Files cut while the last flush ran are covered by this one too.
        while let Ok(later) = cuts.try_recv() {
            upto = later;
        }
        if let Err(e) = db.flush() {
            shared.fail(&io::Error::other(e));
            return;
        }
        let Ok(files) = log_files(dir) else { continue };
        for (n, path) in files {
            if n <= upto {
                if let Err(e) = fs::remove_file(&path) {
                    tracing::warn!(file = %path.display(), error = %e, "could not remove a checkpointed log file");
                }
            }
        }
    }
}

/// The log files in `dir`, oldest first.
fn log_files(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let number = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(n) = number {
            files.push((n, path));
        }
    }
    files.sort();
    Ok(files)
}

/// A new, empty log file, its directory entry synced so it survives a crash.
fn create_log(dir: &Path, number: u64) -> io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{number:016}.wal")))?;
    File::open(dir)?.sync_all()?;
    Ok(file)
}

/// Applies the whole records of one file to sled; returns how many.
fn replay(mut bytes: &[u8], db: &sled::Db) -> Result<usize, String> {
    let mut records = 0;
    while bytes.len() >= 8 {
        let len = u32::from_le_bytes(bytes[0..4].try_into().unwrap_or_default()) as usize;
        let crc = u32::from_le_bytes(bytes[4..8].try_into().unwrap_or_default());
        let Some(payload) = bytes.get(8..8 + len) else { break };
        if crc32fast::hash(payload) != crc {
            break;
        }
        apply(payload, db).map_err(|e| format!("write-ahead log record {records}: {e}"))?;
        records += 1;
        bytes = &bytes[8 + len..];
    }
    Ok(records)
}

fn apply(mut payload: &[u8], db: &sled::Db) -> Result<(), String> {
    fn part<'a>(payload: &mut &'a [u8]) -> Result<&'a [u8], String> {
        let len = payload
            .get(..4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap_or_default()) as usize)
            .ok_or("truncated length")?;
        let bytes = payload.get(4..4 + len).ok_or("truncated field")?;
        *payload = &payload[4 + len..];
        Ok(bytes)
    }
    while let Some((&code, rest)) = payload.split_first() {
        payload = rest;
        let tree = db.open_tree(part(&mut payload)?).map_err(|e| e.to_string())?;
        let key = part(&mut payload)?;
        let result = match code {
            PUT => tree.insert(key, part(&mut payload)?).map(drop),
            REMOVE => tree.remove(key).map(drop),
            CLEAR => tree.clear(),
            other => return Err(format!("unknown operation {other}")),
        };
        result.map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ops: &[Op<'_>]) -> Vec<u8> {
        let wal_state = Mutex::new(State::default());
        let wake = Condvar::new();
        Guard {
            state: wal_state.lock().unwrap(),
            wake: &wake,
        }
        .record(ops);
        let bytes = std::mem::take(&mut wal_state.lock().unwrap().buffer);
        bytes
    }

    #[test]
    fn records_replay_in_order_and_a_torn_tail_is_ignored() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let mut log = record(&[Op::Put {
            tree: b"t",
            key: b"a",
            value: b"1",
        }]);
        log.extend(record(&[
            Op::Put {
                tree: b"t",
                key: b"a",
                value: b"2",
            },
            Op::Put {
                tree: b"u",
                key: b"b",
                value: b"3",
            },
        ]));
        log.extend(record(&[Op::Remove { tree: b"u", key: b"b" }]));
        let whole = log.len();
        // The crash cut the last record short.
        log.extend(record(&[Op::Clear { tree: b"t" }]));
        log.truncate(whole + 6);
        assert_eq!(replay(&log, &db), Ok(3));
        let t = db.open_tree("t").unwrap();
        assert_eq!(t.get("a").unwrap().as_deref(), Some(&b"2"[..]));
        assert!(db.open_tree("u").unwrap().is_empty());
    }

    #[test]
    fn a_record_with_a_bad_checksum_ends_the_replay() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let mut log = record(&[Op::Put {
            tree: b"t",
            key: b"a",
            value: b"1",
        }]);
        let second = log.len();
        log.extend(record(&[Op::Put {
            tree: b"t",
            key: b"b",
            value: b"2",
        }]));
        log[second + 9] ^= 0xff;
        assert_eq!(replay(&log, &db), Ok(1));
        assert!(db.open_tree("t").unwrap().get("b").unwrap().is_none());
    }
}

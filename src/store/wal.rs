//! The write-ahead log that makes [`super::Store`] writes durable.
//!
//! Every write is applied to the store's active layer ([`super::layers`])
//! and appended to an in-memory buffer under one lock, so the log holds the
//! writes in the order readers saw them. A writer thread takes the whole
//! buffer, writes it to the current log file and calls `fdatasync`: one
//! sync acknowledges every write buffered before it (group commit). sled
//! is written and flushed only by the checkpoint thread: every
//! [`DRAIN_EVERY`] it drains the layers into sled, and when the writer
//! moves on to the next file it drains them too (sled then holds
//! everything the old files hold), flushes sled, `fsync`s sled's files
//! ([`SledFiles`]: sled's flush alone would not survive a power cut) and
//! recycles the old log files. At start-up the files left over are
//! replayed into sled in order; replaying a write sled already has is
//! harmless, because records carry whole values. Each checkpoint also
//! puts into sled, before flushing it, the number of the last file it
//! covers ([`CHECKPOINTED_KEY`]): a file left behind at or below it (one
//! that could be neither recycled nor removed) is not replayed again, for
//! its old values would go over newer ones whose files are gone.
//!
//! Files are written over, not grown: a checkpointed file is kept as a
//! spare (`N.spare`, at most [`SPARES`]) and becomes the next log file by a
//! rename. Overwriting blocks a file already has is a data-only
//! `fdatasync`; growing a file makes every sync commit the file system's
//! journal too, which took twice as long here (0.45 against 0.22 ms at the
//! median, 4 KiB writes). Each write is one frame that starts on a page
//! boundary and is padded to the next, so the kernel never reads back a
//! page it must only partly overwrite (a spare's pages may have left the
//! cache).
//!
//! A frame is `len: u32 LE`, the file's number `u64 LE`, `crc32(records):
//! u32 LE`, the records, zeros to the page's end. The number tells this
//! file's frames from what a spare held before (older numbers, since a
//! file's number is always above every number on disk) and from zeros;
//! replay stops at the first frame that is short, of another number or
//! fails its checksum: the write the crash cut off, never acknowledged. A
//! record is one or more operations written together (a batch is one
//! record, so it replays all or nothing): `len: u32 LE`, `crc32(payload):
//! u32 LE`, then for each operation `op: u8` (1 put, 2 remove, 3 clear),
//! the tree name and the key (each `u32 LE` length then bytes) and, for a
//! put, the value likewise. Files of the older format (`N.wal`: records
//! without frames, appended) are replayed at start-up too.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::layers::{Layers, DRAIN_EVERY};

/// How often the log is cut and sled flushed, at most, while writes come.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(2);
/// A log file this large is cut at once.
const CHECKPOINT_BYTES: u64 = 64 * 1024 * 1024;
/// Frames start on a page boundary and fill whole pages.
const PAGE: usize = 4096;
/// A frame's length, file number and checksum.
const FRAME_HEADER: usize = 16;
/// In sled's meta tree: the number of the last log file whose writes sled
/// holds and has flushed (as JSON, as the store's meta values are).
const CHECKPOINTED_KEY: &str = "wal_checkpointed";
/// How many checkpointed files are kept to be written over.
const SPARES: usize = 2;
/// The largest record buffer the writer keeps for the next group; a
/// larger one, after a burst, is let go.
const SPARE_BUFFER_MAX: usize = 4 * 1024 * 1024;

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
    /// Checkpointed files waiting to be written over, by path.
    spares: Mutex<Vec<PathBuf>>,
    /// The checkpoint thread found the layers empty and waits for a
    /// message: the writer sends [`Wake::Wrote`] after its next write.
    /// (An idle server's checkpoint thread sleeps instead of waking every
    /// [`DRAIN_EVERY`].)
    drainer_idle: AtomicBool,
    /// `State::failed` is set: read without the write lock by the
    /// protocol edges, which refuse new work at once then.
    has_failed: AtomicBool,
    /// Told when the log fails, so that no writer waits for a drain.
    layers: Arc<Layers>,
}

/// What the writer tells the checkpoint thread.
enum Wake {
    /// The writer moved past this log file.
    Cut(u64),
    /// Writes came after the checkpoint thread went idle.
    Wrote,
}

#[derive(Default)]
struct State {
    /// Records applied to the active layer and not yet handed to the
    /// writer.
    buffer: Vec<u8>,
    /// The sequence number of the last write buffered.
    appended: u64,
    closing: bool,
    /// The writer is waiting for work: only then does a write wake it (a
    /// condvar's notify is a system call even when nobody waits, and under
    /// load the writer is busy writing and syncing).
    writer_idle: bool,
    /// Once a write or sync failed, nothing more is acknowledged: the file
    /// may hold a hole, so later writes could not be replayed in order.
    failed: Option<String>,
}

/// Holds the log's lock (the store's write lock) while a write is applied
/// to the active layer and recorded.
pub(super) struct Guard<'a> {
    state: MutexGuard<'a, State>,
    wake: &'a Condvar,
}

impl Guard<'_> {
    /// Records writes that the active layer has applied; they replay as
    /// one.
    pub(super) fn record(mut self, ops: &[Op<'_>]) {
        // Length and checksum first, filled in once the payload is
        // written after them: the payload goes straight into the buffer.
        let buffer = &mut self.state.buffer;
        let start = buffer.len();
        buffer.extend_from_slice(&[0; 8]);
        for op in ops {
            let (code, tree, key, value) = match op {
                Op::Put { tree, key, value } => (PUT, *tree, *key, Some(*value)),
                Op::Remove { tree, key } => (REMOVE, *tree, *key, None),
                Op::Clear { tree } => (CLEAR, *tree, &[][..], None),
            };
            buffer.push(code);
            for part in [Some(tree), Some(key), value].into_iter().flatten() {
                buffer.extend_from_slice(&(part.len() as u32).to_le_bytes());
                buffer.extend_from_slice(part);
            }
        }
        let payload = &buffer[start + 8..];
        let (len, crc) = (
            (payload.len() as u32).to_le_bytes(),
            crc32fast::hash(payload).to_le_bytes(),
        );
        buffer[start..start + 4].copy_from_slice(&len);
        buffer[start + 4..start + 8].copy_from_slice(&crc);
        self.state.appended += 1;
        let idle = self.state.writer_idle;
        // Woken after the lock is let go, so it does not wake into it.
        drop(self.state);
        if idle {
            self.wake.notify_one();
        }
    }
}

impl Wal {
    /// Replays the log files in `dir` into `db`, flushes sled, keeps them
    /// as spares, and starts a new log.
    pub(super) fn open(dir: &Path, db: &sled::Db, sled_dir: &Path, layers: Arc<Layers>) -> io::Result<Wal> {
        fs::create_dir_all(dir)?;
        let legacy = numbered_files(dir, "wal")?;
        let covered = checkpointed(db)?;
        // Files a checkpoint already covered: left behind when they could
        // be neither recycled nor removed. Replayed, they would put old
        // values back over newer ones whose own files are gone.
        let (left_behind, files): (Vec<_>, Vec<_>) = numbered_files(dir, "log")?
            .into_iter()
            .partition(|(n, _)| covered.is_some_and(|c| *n <= c));
        if !left_behind.is_empty() {
            tracing::warn!(
                files = left_behind.len(),
                "log files an earlier checkpoint covered were left behind; not replayed"
            );
        }
        let spares = numbered_files(dir, "spare")?;
        let mut replayed = 0usize;
        for (_, path) in &legacy {
            replayed += replay_records(&fs::read(path)?, db).map_err(io::Error::other)?;
        }
        // Every file is surveyed before any is replayed, so that a damaged
        // one refuses the start with sled untouched; each is read again to
        // replay it rather than all held in memory at once.
        let mut surveys = Vec::with_capacity(files.len());
        for (number, path) in &files {
            surveys.push((path.clone(), survey(&fs::read(path)?, *number)));
        }
        check_log_files(&surveys)?;
        for (path, survey) in &surveys {
            replayed += replay_frames(&fs::read(path)?, survey.end, db).map_err(io::Error::other)?;
        }
        // Above every number on disk, so no frame a spare still holds can
        // pass for one of the new file's, and above the last checkpoint's,
        // so the new file is never taken for one it covered.
        let last_replayed = [&legacy, &files]
            .iter()
            .filter_map(|found| found.last().map(|(n, _)| *n))
            .max();
        let number = [&legacy, &files, &spares, &left_behind]
            .iter()
            .filter_map(|found| found.last().map(|(n, _)| *n))
            .chain(covered)
            .max()
            .map_or(1, |n| n + 1);
        let replayed_files = legacy.len() + files.len();
        let mut sled_files = SledFiles::new(sled_dir);
        if let Some(last) = last_replayed {
            mark_checkpointed(db, last)?;
            sled_files.persist(db)?;
            for (_, path) in &legacy {
                fs::remove_file(path)?;
            }
            tracing::info!(
                records = replayed,
                files = replayed_files,
                "replayed the write-ahead log"
            );
        }

        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            durable: tokio::sync::watch::channel(0).0,
            spares: Mutex::new(Vec::new()),
            drainer_idle: AtomicBool::new(false),
            has_failed: AtomicBool::new(false),
            layers: layers.clone(),
        });
        for (n, path) in spares.into_iter().chain(left_behind).chain(files) {
            shared.retire(dir, n, &path);
        }
        let segment = Segment::open(&shared, dir, number)?;
        let (cut_tx, cut_rx) = mpsc::channel::<Wake>();
        let writer = {
            let (shared, dir) = (shared.clone(), dir.to_path_buf());
            std::thread::Builder::new()
                .name("otpgate-wal".into())
                .spawn(move || write_loop(&shared, &dir, segment, &cut_tx))?
        };
        let checkpointer = {
            let (shared, dir, db) = (shared.clone(), dir.to_path_buf(), db.clone());
            std::thread::Builder::new()
                .name("otpgate-checkpoint".into())
                .spawn(move || checkpoint_loop(&shared, &dir, &db, &layers, sled_files, &cut_rx))?
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

    /// Why the log failed, if it did: nothing more will be acknowledged.
    pub(super) fn failure(&self) -> Option<String> {
        if !self.shared.has_failed.load(Ordering::Relaxed) {
            return None;
        }
        self.shared.lock().failed.clone()
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

    /// A log file sled no longer needs: kept as a spare while there is
    /// room, removed otherwise.
    fn retire(&self, dir: &Path, number: u64, path: &Path) {
        let spare = file_named(dir, number, "spare");
        let mut spares = self.spares.lock().unwrap_or_else(|e| e.into_inner());
        if spares.len() < SPARES && fs::rename(path, &spare).is_ok() {
            spares.push(spare);
            return;
        }
        drop(spares);
        if let Err(e) = fs::remove_file(path) {
            tracing::warn!(file = %path.display(), error = %e, "could not remove a checkpointed log file");
        }
    }

    fn fail(&self, e: &io::Error) {
        tracing::error!(error = %e, "the write-ahead log failed; nothing more is acknowledged");
        self.lock()
            .failed
            .get_or_insert_with(|| format!("write-ahead log: {e}"));
        self.has_failed.store(true, Ordering::Relaxed);
        self.durable.send_replace(u64::MAX);
        self.layers.stop_waits();
    }
}

/// The log file being written.
struct Segment {
    file: File,
    number: u64,
    /// Where the next frame goes: a page boundary.
    end: u64,
}

impl Segment {
    /// Log file `number`: a spare renamed, or a new file when there is
    /// none; its directory entry synced so it survives a crash.
    fn open(shared: &Shared, dir: &Path, number: u64) -> io::Result<Segment> {
        let path = file_named(dir, number, "log");
        let spare = shared.spares.lock().unwrap_or_else(|e| e.into_inner()).pop();
        if let Some(spare) = spare {
            if let Err(e) = fs::rename(&spare, &path) {
                tracing::warn!(file = %spare.display(), error = %e, "could not reuse a spare log file");
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&path)?;
        File::open(dir)?.sync_all()?;
        Ok(Segment { file, number, end: 0 })
    }

    /// Writes `records` as one frame and syncs them.
    fn write(&mut self, records: &[u8]) -> io::Result<()> {
        let frame = frame(self.number, records);
        self.file.write_all_at(&frame, self.end)?;
        self.file.sync_data()?;
        self.end += frame.len() as u64;
        Ok(())
    }
}

/// `records` framed for file `number`, padded to whole pages.
fn frame(number: u64, records: &[u8]) -> Vec<u8> {
    let len = (FRAME_HEADER + records.len()).next_multiple_of(PAGE);
    let mut frame = Vec::with_capacity(len);
    frame.extend_from_slice(&(records.len() as u32).to_le_bytes());
    frame.extend_from_slice(&number.to_le_bytes());
    frame.extend_from_slice(&crc32fast::hash(records).to_le_bytes());
    frame.extend_from_slice(records);
    frame.resize(len, 0);
    frame
}

/// The writer thread: takes the buffer, writes and syncs it, answers the
/// waiters; cuts the file when a checkpoint is due.
fn write_loop(shared: &Shared, dir: &Path, mut segment: Segment, cut: &mpsc::Sender<Wake>) {
    let mut cut_at = Instant::now() + CHECKPOINT_EVERY;
    // The buffer written last, emptied: handed back to the writes so that
    // each group's buffer does not grow again from nothing.
    let mut spare = Vec::new();
    loop {
        let (bytes, upto) = {
            let mut state = shared.lock();
            while state.buffer.is_empty() && !state.closing {
                state.writer_idle = true;
                state = shared.wake.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            state.writer_idle = false;
            if state.failed.is_some() {
                return;
            }
            if state.buffer.is_empty() {
                // Closing with everything written: a last checkpoint, so a
                // clean stop leaves no log to replay.
                let _ = cut.send(Wake::Cut(segment.number));
                return;
            }
            (
                std::mem::replace(&mut state.buffer, std::mem::take(&mut spare)),
                state.appended,
            )
        };
        if let Err(e) = segment.write(&bytes) {
            shared.fail(&e);
            return;
        }
        if bytes.capacity() <= SPARE_BUFFER_MAX {
            spare = bytes;
            spare.clear();
        }
        mark_durable(&shared.durable, upto);
        if shared.drainer_idle.swap(false, Ordering::SeqCst) {
            let _ = cut.send(Wake::Wrote);
        }
        if segment.end >= CHECKPOINT_BYTES || Instant::now() >= cut_at {
            match Segment::open(shared, dir, segment.number + 1) {
                Ok(next) => {
                    let _ = cut.send(Wake::Cut(segment.number));
                    segment = next;
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

/// Raises the durable mark to `upto`, never lowers it: once the checkpoint
/// thread has failed the log (`u64::MAX`, every waiter answered), a write
/// that finished meanwhile must not put the mark back under writes that
/// will now never be written, whose waiters would wait for ever (a
/// shutdown after a full disk did: the full-disk test).
fn mark_durable(durable: &tokio::sync::watch::Sender<u64>, upto: u64) {
    durable.send_if_modified(|mark| {
        let raised = upto > *mark;
        *mark = (*mark).max(upto);
        raised
    });
}

/// The checkpoint thread. Every [`DRAIN_EVERY`] it moves the writes of
/// the store's active layer into sled; once the writer has moved past a
/// log file, it does that too (then sled holds every write in the file)
/// and makes sled's files durable, after which the log file can be
/// written over. It is sled's only writer once the log is replayed.
fn checkpoint_loop(
    shared: &Shared,
    dir: &Path,
    db: &sled::Db,
    layers: &Layers,
    mut sled_files: SledFiles,
    cuts: &mpsc::Receiver<Wake>,
) {
    let drain = || {
        // Under the write lock: the frozen layer holds every write logged.
        let state = shared.lock();
        layers.freeze();
        drop(state);
        layers.drain(db).map_err(io::Error::other)
    };
    let mut idle = false;
    loop {
        let woken = if idle {
            cuts.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected)
        } else {
            cuts.recv_timeout(DRAIN_EVERY)
        };
        idle = false;
        let mut upto = match woken {
            Ok(Wake::Cut(upto)) => upto,
            // Writes came: drained on the next tick.
            Ok(Wake::Wrote) => continue,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Err(e) = drain() {
                    shared.fail(&e);
                    return;
                }
                // Said before looking, so a write the look misses is
                // followed by a `Wake::Wrote`.
                shared.drainer_idle.store(true, Ordering::SeqCst);
                idle = layers.is_empty();
                if !idle {
                    shared.drainer_idle.store(false, Ordering::SeqCst);
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        // Files cut while the last flush ran are covered by this one too.
        while let Ok(later) = cuts.try_recv() {
            if let Wake::Cut(later) = later {
                upto = later;
            }
        }
        let checkpoint = drain()
            .and_then(|()| mark_checkpointed(db, upto))
            .and_then(|()| sled_files.persist(db).map(drop));
        if let Err(e) = checkpoint {
            shared.fail(&e);
            return;
        }
        let Ok(files) = numbered_files(dir, "log") else {
            continue;
        };
        for (n, path) in files.into_iter().filter(|(n, _)| *n <= upto) {
            shared.retire(dir, n, &path);
        }
    }
}

/// The number of the last log file a checkpoint covered, if any did.
fn checkpointed(db: &sled::Db) -> io::Result<Option<u64>> {
    let meta = db.open_tree(super::META_TREE).map_err(io::Error::other)?;
    match meta.get(CHECKPOINTED_KEY).map_err(io::Error::other)? {
        Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(io::Error::other),
        None => Ok(None),
    }
}

/// Puts into sled (flushed by the checkpoint that follows) that sled holds
/// every write of the log files up to `number`.
fn mark_checkpointed(db: &sled::Db, number: u64) -> io::Result<()> {
    let meta = db.open_tree(super::META_TREE).map_err(io::Error::other)?;
    meta.insert(CHECKPOINTED_KEY, number.to_string().as_bytes())
        .map_err(io::Error::other)?;
    Ok(())
}

/// sled's files, made durable before a log file that holds the same
/// writes is let go. Upstream sled 0.34 wrote its buffers with
/// `sync_file_range`, which neither empties the disk's write cache nor
/// records the file's new length, and wrote a node too large for its log
/// (a leaf of large values: raw mail) to a file of its own under `blobs/`
/// without syncing it at all. A crash of the process loses none of that
/// (the kernel has it), but a power cut or a crash of the machine could
/// lose writes already acknowledged, once their log file was written
/// over. The vendored sled (`vendor/sled/VENDORED.md`) now syncs both
/// itself, because its recovery could not open a database that had lost
/// what it counted stable; each checkpoint still `fsync`s sled's file,
/// the blobs not synced before (a blob never changes once written) and
/// both directories, which also covers the snapshot files sled renames
/// into place without syncing their directory.
///
/// sled writes a blob inside the insert that needs it, and every insert
/// comes from the checkpoint thread, which drains the layers before it
/// persists: every blob of the writes a checkpoint covers is there when
/// it lists them, and none is being written meanwhile. (While writers
/// inserted into sled themselves, a blob made during the checkpoint could
/// be pointed to by sled's file, synced last, without being synced.)
struct SledFiles {
    dir: PathBuf,
    /// The blobs synced so far, by number (sled names them by log
    /// sequence number).
    blobs_synced: BTreeSet<u64>,
}

impl SledFiles {
    fn new(dir: &Path) -> SledFiles {
        SledFiles {
            dir: dir.to_path_buf(),
            blobs_synced: BTreeSet::new(),
        }
    }

    /// Flushes sled and syncs its files; answers the paths synced.
    fn persist(&mut self, db: &sled::Db) -> io::Result<Vec<PathBuf>> {
        let blobs = self.dir.join("blobs");
        let listed = blob_numbers(&blobs)?;
        db.flush().map_err(io::Error::other)?;
        let mut synced = Vec::new();
        for &number in listed.difference(&self.blobs_synced) {
            let path = blobs.join(number.to_string());
            match File::open(&path) {
                Ok(file) => file.sync_all()?,
                // sled collected it meanwhile: nothing refers to it any more.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
            synced.push(path);
        }
        if !synced.is_empty() {
            File::open(&blobs)?.sync_all()?;
            synced.push(blobs);
        }
        for path in [self.dir.join("db"), self.dir.clone()] {
            File::open(&path)?.sync_all()?;
            synced.push(path);
        }
        // Blobs sled removed are never listed again: their names only grow.
        self.blobs_synced = listed;
        Ok(synced)
    }
}

/// The numbers of the blob files in `dir` (none when sled made no blob
/// directory).
fn blob_numbers(dir: &Path) -> io::Result<BTreeSet<u64>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(e) => return Err(e),
    };
    let mut numbers = BTreeSet::new();
    for entry in entries {
        if let Some(number) = entry?.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) {
            numbers.insert(number);
        }
    }
    Ok(numbers)
}

/// `dir/NUMBER.extension`, as [`numbered_files`] reads it.
fn file_named(dir: &Path, number: u64, extension: &str) -> PathBuf {
    dir.join(format!("{number:016}.{extension}"))
}

/// The files in `dir` named `NUMBER.extension`, by number.
fn numbered_files(dir: &Path, extension: &str) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let number = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(extension)?.strip_suffix('.'))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(n) = number {
            files.push((n, path));
        }
    }
    files.sort();
    Ok(files)
}

/// Where the frames of log file `number` end, and what follows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Survey {
    /// The byte after the last frame that replays.
    end: usize,
    frames: usize,
    /// The replay ends at a frame of this file that is short or fails its
    /// checksum (not at zeros, the end, or an older file's frame): the
    /// write a crash cut off, if nothing of this file's came after it.
    torn: bool,
    /// A frame of this file that passes its checksum, after the end: the
    /// frame at the end was written and synced once (the writer writes
    /// the next frame only after syncing one), and has been damaged since.
    resumes: Option<usize>,
}

/// The frames of log file `number`: they replay up to the first one that
/// is short, of another number or fails its checksum.
fn survey(bytes: &[u8], number: u64) -> Survey {
    let frame_at = |at: usize| -> Result<usize, bool> {
        let header = bytes.get(at..at + FRAME_HEADER).ok_or(false)?;
        let len = u32::from_le_bytes(header[0..4].try_into().unwrap_or_default()) as usize;
        let file = u64::from_le_bytes(header[4..12].try_into().unwrap_or_default());
        let crc = u32::from_le_bytes(header[12..16].try_into().unwrap_or_default());
        if file != number {
            return Err(false);
        }
        match bytes.get(at + FRAME_HEADER..(at + FRAME_HEADER).saturating_add(len)) {
            Some(body) if crc32fast::hash(body) == crc => Ok((at + FRAME_HEADER + len).next_multiple_of(PAGE)),
            _ => Err(true),
        }
    };
    let (mut end, mut frames) = (0, 0);
    let torn = loop {
        match frame_at(end) {
            Ok(next) => {
                end = next;
                frames += 1;
            }
            Err(torn) => break torn,
        }
    };
    let resumes = (end + PAGE..bytes.len()).step_by(PAGE).find(|&at| frame_at(at).is_ok());
    Survey {
        end,
        frames,
        torn,
        resumes,
    }
}

/// Applies the frames of log file `number` to sled, up to the first one
/// that is short, of another number or fails its checksum ([`survey`]);
/// returns how many records they held.
#[cfg(test)]
fn replay(bytes: &[u8], number: u64, db: &sled::Db) -> Result<usize, String> {
    replay_frames(bytes, survey(bytes, number).end, db)
}

/// Applies the frames that end at `end` ([`Survey::end`]) to sled;
/// returns how many records they held.
fn replay_frames(bytes: &[u8], end: usize, db: &sled::Db) -> Result<usize, String> {
    let mut records = 0;
    let mut at = 0;
    while at < end {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or_default()) as usize;
        records += replay_records(&bytes[at + FRAME_HEADER..at + FRAME_HEADER + len], db)?;
        at = (at + FRAME_HEADER + len).next_multiple_of(PAGE);
    }
    Ok(records)
}

/// Refuses log files whose replay would end before writes that were
/// acknowledged: a frame that fails its checksum, or is short, with a
/// sound frame of the same file after it, or at the end of a file when a
/// later file holds frames (the writer starts a file only once the one
/// before is synced whole). A crash cuts off only the last write it did
/// not acknowledge, so either is damage done since; replaying up to it
/// would start the server without what came after, or with later writes
/// over a gap. Not caught: damage to the last frame of the newest file,
/// or to a frame's file number, both indistinguishable from where a
/// crash or a recycled file ends a log.
fn check_log_files(surveys: &[(PathBuf, Survey)]) -> io::Result<()> {
    for (i, (path, survey)) in surveys.iter().enumerate() {
        let later = surveys[i + 1..].iter().any(|(_, s)| s.frames > 0);
        let damaged = match survey.resumes {
            Some(_) => true,
            None => survey.torn && later,
        };
        if damaged {
            return Err(io::Error::other(format!(
                "the write-ahead log file {} is damaged at byte {}, with acknowledged writes after it: starting \
                 would lose them. Restore the data directory from a copy; or move that file (and any later \
                 .log files) out of the directory to start without the writes from there on",
                path.display(),
                survey.end
            )));
        }
    }
    Ok(())
}

/// Applies whole records to sled; returns how many.
fn replay_records(mut bytes: &[u8], db: &sled::Db) -> Result<usize, String> {
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
    fn the_durable_mark_is_never_lowered_once_the_log_failed() {
        let durable = tokio::sync::watch::channel(0).0;
        super::mark_durable(&durable, 7);
        assert_eq!(*durable.borrow(), 7);
        durable.send_replace(u64::MAX);
        super::mark_durable(&durable, 9);
        assert_eq!(*durable.borrow(), u64::MAX);
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
        assert_eq!(replay_records(&log, &db), Ok(3));
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
        assert_eq!(replay_records(&log, &db), Ok(1));
        assert!(db.open_tree("t").unwrap().get("b").unwrap().is_none());
    }

    fn put(key: &[u8], value: &[u8]) -> Vec<u8> {
        record(&[Op::Put { tree: b"t", key, value }])
    }

    fn value(db: &sled::Db, key: &str) -> Option<Vec<u8>> {
        db.open_tree("t").unwrap().get(key).unwrap().map(|v| v.to_vec())
    }

    #[test]
    fn frames_fill_whole_pages_and_replay_in_order() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let first = frame(4, &[put(b"a", b"1"), put(b"b", b"1")].concat());
        let second = frame(4, &put(b"a", b"2"));
        assert_eq!((first.len(), second.len()), (PAGE, PAGE));
        let big = frame(4, &put(b"c", &[7; 5000]));
        assert_eq!(big.len(), 2 * PAGE);
        let log = [first, second, big].concat();
        assert_eq!(replay(&log, 4, &db), Ok(4));
        assert_eq!(value(&db, "a").as_deref(), Some(&b"2"[..]));
        assert_eq!(value(&db, "c").map(|v| v.len()), Some(5000));
    }

    /// A spare written over under a new number still holds the frames of
    /// its last use after the new ones: they end the replay, as the zeros
    /// of a new file do, and a frame the crash cut short does too.
    #[test]
    fn a_written_over_spare_replays_only_its_new_frames() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let mut log = [
            frame(3, &put(b"a", b"old")),
            frame(3, &put(b"b", b"old")),
            frame(3, &put(b"c", b"old")),
        ]
        .concat();
        let new = frame(7, &put(b"a", b"new"));
        log[..new.len()].copy_from_slice(&new);
        assert_eq!(replay(&log, 7, &db), Ok(1));
        assert_eq!(value(&db, "a").as_deref(), Some(&b"new"[..]));
        assert_eq!(value(&db, "b"), None, "a frame of the spare's last use is not replayed");

        let db = sled::Config::new().temporary(true).open().unwrap();
        let log = [frame(7, &put(b"a", b"1")), vec![0; PAGE], frame(7, &put(b"b", b"1"))].concat();
        assert_eq!(replay(&log, 7, &db), Ok(1), "zeros end the replay");
        let torn = frame(7, &put(b"b", &[1; 100]));
        let log = [&frame(7, &put(b"a", b"1"))[..], &torn[..FRAME_HEADER + 50]].concat();
        assert_eq!(replay(&log, 7, &db), Ok(1), "a frame cut short ends the replay");
        let mut bad = [frame(7, &put(b"a", b"1")), frame(7, &put(b"b", b"2"))].concat();
        bad[PAGE + FRAME_HEADER + 3] ^= 0xff;
        assert_eq!(replay(&bad, 7, &db), Ok(1), "a bad checksum ends the replay");
    }

    /// Where a log ends and why: the frames that pass, whether the end is
    /// a frame of this file gone bad, and whether a sound frame of it
    /// comes after that.
    #[test]
    fn a_survey_tells_a_torn_end_from_damage_in_the_middle() {
        let frames = |n: u64| {
            [
                frame(n, &put(b"a", b"1")),
                frame(n, &put(b"b", b"2")),
                frame(n, &put(b"c", b"3")),
            ]
        };
        let log = frames(7).concat();
        assert_eq!(
            survey(&log, 7),
            Survey {
                end: 3 * PAGE,
                frames: 3,
                torn: false,
                resumes: None
            }
        );
        let mut torn = log.clone();
        torn[2 * PAGE + FRAME_HEADER + 3] ^= 0xff;
        assert_eq!(
            survey(&torn, 7),
            Survey {
                end: 2 * PAGE,
                frames: 2,
                torn: true,
                resumes: None
            },
            "the last frame: a crash's"
        );
        let mut damaged = log.clone();
        damaged[PAGE + FRAME_HEADER + 3] ^= 0xff;
        assert_eq!(
            survey(&damaged, 7).resumes,
            Some(2 * PAGE),
            "a sound frame after a bad one"
        );
        let mut header = log.clone();
        header[PAGE + 5] ^= 0x01;
        assert_eq!(
            (survey(&header, 7).torn, survey(&header, 7).resumes),
            (false, Some(2 * PAGE)),
            "a damaged file number, caught by what follows"
        );
        // A spare written over: its old frames are another file's.
        let mut spare = frames(3).concat();
        spare[..PAGE].copy_from_slice(&frame(7, &put(b"a", b"new")));
        assert_eq!(
            survey(&spare, 7),
            Survey {
                end: PAGE,
                frames: 1,
                torn: false,
                resumes: None
            }
        );
    }

    /// The log refuses to open when its replay would end before writes
    /// that were acknowledged, and says which file and what to do; a torn
    /// end of the newest file (a crash's) opens.
    #[test]
    fn a_log_damaged_before_acknowledged_writes_is_refused() {
        let open = |files: &[(u64, Vec<u8>)]| {
            let dir = tempfile::tempdir().unwrap();
            for (number, bytes) in files {
                fs::write(file_named(dir.path(), *number, "log"), bytes).unwrap();
            }
            let sled_dir = tempfile::tempdir().unwrap();
            let db = sled::Config::new().path(sled_dir.path()).open().unwrap();
            let opened = Wal::open(dir.path(), &db, sled_dir.path(), Arc::new(Layers::new()));
            (opened.map(drop).map_err(|e| e.to_string()), value(&db, "a"))
        };
        let sound = |n: u64, key: &[u8]| frame(n, &put(key, b"1"));
        let mut torn_tail = [sound(4, b"a"), sound(4, b"b")].concat();
        torn_tail[PAGE + FRAME_HEADER + 3] ^= 0xff;
        let (opened, a) = open(&[(4, torn_tail.clone())]);
        assert_eq!((opened, a.as_deref()), (Ok(()), Some(&b"1"[..])), "a crash's torn end");

        let (opened, a) = open(&[(4, torn_tail), (5, sound(5, b"c"))]);
        let refusal = opened.unwrap_err();
        assert!(
            refusal.contains("0000000000000004.log is damaged at byte 4096"),
            "{refusal}"
        );
        assert!(refusal.contains("Restore the data directory from a copy"), "{refusal}");
        assert_eq!(a, None, "nothing replayed");

        let mut middle = [sound(4, b"a"), sound(4, b"b"), sound(4, b"c")].concat();
        middle[PAGE + FRAME_HEADER + 3] ^= 0xff;
        assert!(open(&[(4, middle)]).0.unwrap_err().contains("damaged at byte 4096"));
    }

    /// A log file a checkpoint covered but could not recycle or remove is
    /// not replayed over the newer values sled holds, and the new log is
    /// numbered past the checkpoint even when no file is left on disk.
    #[test]
    fn a_log_file_a_checkpoint_covered_is_not_replayed_again() {
        let dir = tempfile::tempdir().unwrap();
        let sled_dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(sled_dir.path()).open().unwrap();
        // File 5 was checkpointed, then file 6 (whose writes set `a` anew)
        // was checkpointed and recycled; file 5 stayed behind. File 7 is
        // the one the crash left.
        db.open_tree("t").unwrap().insert("a", "new").unwrap();
        mark_checkpointed(&db, 6).unwrap();
        fs::write(file_named(dir.path(), 5, "log"), frame(5, &put(b"a", b"old"))).unwrap();
        fs::write(file_named(dir.path(), 7, "log"), frame(7, &put(b"b", b"1"))).unwrap();
        drop(Wal::open(dir.path(), &db, sled_dir.path(), Arc::new(Layers::new())).unwrap());
        assert_eq!(value(&db, "a").as_deref(), Some(&b"new"[..]));
        assert_eq!(value(&db, "b").as_deref(), Some(&b"1"[..]));
        assert!(checkpointed(&db).unwrap() >= Some(7));
        assert!(!file_named(dir.path(), 5, "log").exists(), "recycled now");

        let dir = tempfile::tempdir().unwrap();
        mark_checkpointed(&db, 41).unwrap();
        let wal = Wal::open(dir.path(), &db, sled_dir.path(), Arc::new(Layers::new())).unwrap();
        assert!(
            file_named(dir.path(), 42, "log").exists(),
            "numbered past the checkpoint"
        );
        drop(wal);
        assert_eq!(checkpointed(&db).unwrap(), Some(42), "a clean stop's checkpoint");
    }

    /// A checkpoint thread with nothing to drain waits without a timer,
    /// and the writer wakes it after the next write, which then reaches
    /// sled as before.
    #[test]
    fn an_idle_checkpoint_thread_is_woken_by_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let sled_dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(sled_dir.path()).open().unwrap();
        let layers = Arc::new(Layers::new());
        let wal = Wal::open(dir.path(), &db, sled_dir.path(), layers.clone()).unwrap();
        let until = |what: &str, done: &dyn Fn() -> bool| {
            let deadline = Instant::now() + Duration::from_secs(1);
            while !done() {
                assert!(Instant::now() < deadline, "{what}");
                std::thread::yield_now();
            }
        };
        let idle = || wal.shared.drainer_idle.load(Ordering::SeqCst);
        for key in [&b"a"[..], b"b"] {
            until("the checkpoint thread goes idle", &idle);
            let ops = [Op::Put {
                tree: b"t",
                key,
                value: b"1",
            }];
            let guard = wal.lock().unwrap();
            layers.write(&ops);
            guard.record(&ops);
            until("the write is drained into sled", &|| {
                db.open_tree("t").unwrap().contains_key(key).unwrap()
            });
        }
    }

    /// A log of the older format (records appended, no frames) left by a
    /// crash is replayed too, and the new log is numbered after it.
    #[test]
    fn a_log_of_the_older_format_is_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let sled_dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(sled_dir.path()).open().unwrap();
        fs::write(
            dir.path().join("0000000000000003.wal"),
            [put(b"a", b"1"), put(b"b", b"2")].concat(),
        )
        .unwrap();
        drop(Wal::open(dir.path(), &db, sled_dir.path(), Arc::new(Layers::new())).unwrap());
        assert_eq!(value(&db, "b").as_deref(), Some(&b"2"[..]));
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["0000000000000004.spare"]);
    }

    #[test]
    fn a_checkpoint_syncs_sleds_file_and_each_new_blob_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let mut files = SledFiles::new(dir.path());
        let base = vec![dir.path().join("db"), dir.path().to_path_buf()];
        assert_eq!(files.persist(&db).unwrap(), base);

        // A value too large for sled's log goes to a blob of its own.
        db.insert(b"raw mail", vec![b'x'; 300 * 1024]).unwrap();
        let synced = files.persist(&db).unwrap();
        let blobs: Vec<_> = fs::read_dir(dir.path().join("blobs"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(!blobs.is_empty(), "sled wrote no blob");
        for blob in &blobs {
            assert!(synced.contains(blob), "{} not synced: {synced:?}", blob.display());
        }
        assert!(synced.contains(&dir.path().join("blobs")), "{synced:?}");
        assert!(synced.ends_with(&base), "{synced:?}");

        // Nothing new: only sled's file and directory again.
        assert_eq!(files.persist(&db).unwrap(), base);

        // A blob numbered below those synced (writers that reserved sled's
        // log in one order and wrote their blobs in the other) is synced.
        let late = dir.path().join("blobs").join("1");
        fs::write(&late, b"late").unwrap();
        let synced = files.persist(&db).unwrap();
        assert_eq!(synced[..2], [late, dir.path().join("blobs")], "{synced:?}");
    }
}

//! Writes on their way to sled: the store's write-back layers.
//!
//! A write goes to the write-ahead log (which makes it durable) and to the
//! *active* layer, an ordered map per tree held in memory; it does not
//! touch sled. Every [`DRAIN_EVERY`] the checkpoint thread *freezes* the
//! active layer (a new, empty one takes its place) and *drains* the frozen
//! one into sled, on its own thread, off every request's path. A key
//! written several times between two drains reaches sled once, and a key
//! put and removed between them (a queued SMS, a receipt waiting for its
//! `deliver_sm_resp`) never reaches it: an SMPP message made twelve sled
//! writes and now makes five (BENCHMARKS.md, tenth round).
//!
//! Reads look in the active layer, then the frozen one, then sled: the
//! first that knows the key answers, and a removal is remembered as a
//! tombstone (`None`) until it is drained. A tree cleared in a layer hides
//! everything below that layer. Range reads merge the three, the newest
//! source winning a key, and read the layers a chunk at a time, so they
//! stay lazy over trees of any size.
//!
//! Writers hold the store's write lock (the log's) while they change the
//! active layer, and the freeze takes the same lock, so a frozen layer
//! holds every write logged before it; the checkpoint, which freezes and
//! drains after cutting the log, therefore finds sled holding everything
//! the log files it retires hold.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, RwLockReadGuard};
use std::time::Duration;

use sled::IVec;

use super::wal::Op;

/// How often the active layer is frozen and drained into sled.
pub(super) const DRAIN_EVERY: Duration = Duration::from_millis(10);
/// An active layer this large makes writers wait for the next freeze, so
/// memory stays bounded when sled falls behind (large mail, say).
const MAX_ACTIVE_BYTES: usize = 64 * 1024 * 1024;
/// How many entries a range read takes from a layer at once.
const CHUNK: usize = 64;

/// One tree's writes in one layer.
#[derive(Default)]
struct Part {
    /// The tree was cleared in this layer: nothing below it counts.
    cleared: bool,
    /// `None`: removed.
    entries: BTreeMap<IVec, Option<IVec>>,
}

/// Writes to every tree between two freezes.
#[derive(Default)]
struct Layer {
    trees: HashMap<IVec, Part>,
}

type Locked<T> = Arc<RwLock<T>>;

/// The layers a reader sees: the active one and at most one frozen.
struct Stack {
    active: Locked<Layer>,
    frozen: Option<Locked<Layer>>,
}

impl Stack {
    /// Newest first.
    fn layers(&self) -> impl Iterator<Item = &Locked<Layer>> {
        std::iter::once(&self.active).chain(self.frozen.as_ref())
    }
}

pub(super) struct Layers {
    stack: RwLock<Arc<Stack>>,
    /// The bytes written to the active layer since its freeze.
    active_bytes: AtomicUsize,
    /// Writers waiting for a freeze, and the freezes so far.
    frozen_count: Mutex<u64>,
    froze: Condvar,
    /// Writes that waited for room, and the microseconds they waited.
    waits: AtomicU64,
    waited_us: AtomicU64,
    /// Nothing will be drained any more (the log failed): no writer waits.
    stopped: std::sync::atomic::AtomicBool,
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

impl Layers {
    pub(super) fn new() -> Layers {
        Layers {
            stack: RwLock::new(Arc::new(Stack {
                active: Arc::default(),
                frozen: None,
            })),
            active_bytes: AtomicUsize::new(0),
            frozen_count: Mutex::new(0),
            froze: Condvar::new(),
            waits: AtomicU64::new(0),
            waited_us: AtomicU64::new(0),
            stopped: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn stack(&self) -> Arc<Stack> {
        read(&self.stack).clone()
    }

    /// Whether no write waits to be drained.
    pub(super) fn is_empty(&self) -> bool {
        let stack = self.stack();
        stack.frozen.is_none() && read(&stack.active).trees.is_empty()
    }

    /// Waits, before taking the write lock, while the active layer is over
    /// its bound (only a store whose layers are drained may call this).
    ///
    /// Writers are tokio tasks: on a multi-threaded runtime the wait hands
    /// the worker's other tasks to another thread first
    /// (`block_in_place`), so reads, health checks and sessions with
    /// nothing to write go on while writers wait for sled to catch up;
    /// with two workers, two waiting writers would otherwise stop the
    /// whole server.
    pub(super) fn wait_for_room(&self) {
        if self.active_bytes.load(Ordering::Relaxed) <= MAX_ACTIVE_BYTES {
            return;
        }
        self.waits.fetch_add(1, Ordering::Relaxed);
        let on_one_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread);
        if on_one_thread {
            self.wait_for_freeze();
        } else {
            tokio::task::block_in_place(|| self.wait_for_freeze());
        }
    }

    fn wait_for_freeze(&self) {
        let started = std::time::Instant::now();
        let mut count = self.frozen_count.lock().unwrap_or_else(|e| e.into_inner());
        let seen = *count;
        while self.active_bytes.load(Ordering::Relaxed) > MAX_ACTIVE_BYTES
            && *count == seen
            && !self.stopped.load(Ordering::Relaxed)
        {
            count = self.froze.wait(count).unwrap_or_else(|e| e.into_inner());
        }
        drop(count);
        let waited = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.waited_us.fetch_add(waited, Ordering::Relaxed);
    }

    /// No drain will come any more (the log failed, so the checkpoint
    /// thread is gone): writers waiting for room go on, to find the log
    /// failed, rather than hold their threads for ever.
    pub(super) fn stop_waits(&self) {
        let count = self.frozen_count.lock().unwrap_or_else(|e| e.into_inner());
        self.stopped.store(true, Ordering::Relaxed);
        drop(count);
        self.froze.notify_all();
    }

    /// The bytes written since the last freeze, and the writes that waited
    /// for room.
    pub(super) fn pressure(&self) -> super::Pressure {
        super::Pressure {
            pending_bytes: self.active_bytes.load(Ordering::Relaxed),
            write_waits: self.waits.load(Ordering::Relaxed),
            write_wait_seconds: self.waited_us.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }

    /// Applies writes to the active layer; the caller holds the write lock.
    pub(super) fn write(&self, ops: &[Op<'_>]) {
        let stack = self.stack();
        let mut layer = stack.active.write().unwrap_or_else(|e| e.into_inner());
        let mut bytes = 0;
        for op in ops {
            match *op {
                Op::Put { tree, key, value } => {
                    bytes += key.len() + value.len();
                    part(&mut layer, tree).entries.insert(key.into(), Some(value.into()));
                }
                Op::Remove { tree, key } => {
                    bytes += key.len();
                    part(&mut layer, tree).entries.insert(key.into(), None);
                }
                Op::Clear { tree } => {
                    let part = part(&mut layer, tree);
                    part.entries.clear();
                    part.cleared = true;
                }
            }
        }
        self.active_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Makes the active layer the frozen one, under the write lock (so it
    /// holds every write logged so far). Does nothing while a frozen layer
    /// is still being drained, or when there is nothing to freeze.
    pub(super) fn freeze(&self) {
        let mut stack = self.stack.write().unwrap_or_else(|e| e.into_inner());
        if stack.frozen.is_some() || read(&stack.active).trees.is_empty() {
            return;
        }
        *stack = Arc::new(Stack {
            active: Arc::default(),
            frozen: Some(stack.active.clone()),
        });
        drop(stack);
        self.active_bytes.store(0, Ordering::Relaxed);
        *self.frozen_count.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.froze.notify_all();
    }

    /// Writes the frozen layer into sled, then lets it go: readers find its
    /// writes in sled from then on.
    pub(super) fn drain(&self, db: &sled::Db) -> sled::Result<()> {
        let Some(frozen) = self.stack().frozen.clone() else {
            return Ok(());
        };
        for (name, part) in &read(&frozen).trees {
            let tree = db.open_tree(name)?;
            if part.cleared {
                tree.clear()?;
            }
            for (key, value) in &part.entries {
                match value {
                    Some(value) => drop(tree.insert(key, value.clone())?),
                    None => drop(tree.remove(key)?),
                }
            }
        }
        let mut stack = self.stack.write().unwrap_or_else(|e| e.into_inner());
        *stack = Arc::new(Stack {
            active: stack.active.clone(),
            frozen: None,
        });
        Ok(())
    }

    /// The value of `key` in `tree`, `sled` being the tree in sled.
    pub(super) fn get(&self, tree: &[u8], key: &[u8], sled: &sled::Tree) -> sled::Result<Option<IVec>> {
        for layer in self.stack().layers() {
            if let Some(part) = read(layer).trees.get(tree) {
                if let Some(value) = part.entries.get(key) {
                    return Ok(value.clone());
                }
                if part.cleared {
                    return Ok(None);
                }
            }
        }
        sled.get(key)
    }

    /// The entries of `tree` between `lower` and `upper`, in key order or
    /// (`rev`) the reverse, read as the caller goes.
    pub(super) fn range(
        &self,
        tree: &[u8],
        sled: &sled::Tree,
        lower: Bound<Vec<u8>>,
        upper: Bound<Vec<u8>>,
        rev: bool,
    ) -> Merge {
        if is_empty_range(&lower, &upper) {
            return Merge {
                sources: Vec::new(),
                rev,
            };
        }
        let mut sources = Vec::new();
        let mut cleared = false;
        for layer in self.stack().layers() {
            let Some(part_cleared) = read(layer).trees.get(tree).map(|p| p.cleared) else {
                continue;
            };
            sources.push(Source::Layer(Cursor {
                layer: layer.clone(),
                tree: tree.into(),
                lower: lower.clone(),
                upper: upper.clone(),
                rev,
                chunk: VecDeque::new(),
                done: false,
            }));
            if part_cleared {
                cleared = true;
                break;
            }
        }
        if !cleared {
            let range = sled.range((lower, upper));
            let iter: SledRange = if rev { Box::new(range.rev()) } else { Box::new(range) };
            sources.push(Source::Sled(iter.peekable()));
        }
        Merge { sources, rev }
    }
}

fn part<'a>(layer: &'a mut Layer, tree: &[u8]) -> &'a mut Part {
    layer.trees.entry(tree.into()).or_default()
}

/// Whether no key lies between the bounds (`BTreeMap::range` panics on
/// such bounds).
fn is_empty_range(lower: &Bound<Vec<u8>>, upper: &Bound<Vec<u8>>) -> bool {
    match (lower, upper) {
        (Bound::Included(l), Bound::Included(u)) => l > u,
        (Bound::Included(l) | Bound::Excluded(l), Bound::Excluded(u)) | (Bound::Excluded(l), Bound::Included(u)) => {
            l >= u
        }
        _ => false,
    }
}

/// One layer's part of a range read, a chunk at a time.
struct Cursor {
    layer: Locked<Layer>,
    tree: IVec,
    lower: Bound<Vec<u8>>,
    upper: Bound<Vec<u8>>,
    rev: bool,
    chunk: VecDeque<(IVec, Option<IVec>)>,
    done: bool,
}

impl Cursor {
    fn peek(&mut self) -> Option<&(IVec, Option<IVec>)> {
        if self.chunk.is_empty() && !self.done {
            self.fill();
        }
        self.chunk.front()
    }

    fn fill(&mut self) {
        if is_empty_range(&self.lower, &self.upper) {
            self.done = true;
            return;
        }
        let layer = read(&self.layer);
        let Some(part) = layer.trees.get(&self.tree) else {
            self.done = true;
            return;
        };
        let bounds = (as_slice(&self.lower), as_slice(&self.upper));
        let range = part.entries.range::<[u8], _>(bounds);
        let taken: Vec<_> = if self.rev {
            range.rev().take(CHUNK).collect()
        } else {
            range.take(CHUNK).collect()
        };
        self.done = taken.len() < CHUNK;
        if let Some((last, _)) = taken.last() {
            // The next chunk starts past the last key read.
            let past = Bound::Excluded(last.to_vec());
            if self.rev {
                self.upper = past;
            } else {
                self.lower = past;
            }
        }
        self.chunk = taken.into_iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    }
}

fn as_slice(bound: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match bound {
        Bound::Included(b) => Bound::Included(b.as_slice()),
        Bound::Excluded(b) => Bound::Excluded(b.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// sled's part of a range read, in either direction.
type SledRange = Box<dyn Iterator<Item = sled::Result<(IVec, IVec)>> + Send>;

enum Source {
    Layer(Cursor),
    Sled(std::iter::Peekable<SledRange>),
}

impl Source {
    /// The next key, or the error sled met.
    fn peek_key(&mut self) -> Option<Result<&[u8], ()>> {
        match self {
            Source::Layer(cursor) => cursor.peek().map(|(k, _)| Ok(&k[..])),
            Source::Sled(iter) => iter.peek().map(|item| match item {
                Ok((k, _)) => Ok(&k[..]),
                Err(_) => Err(()),
            }),
        }
    }

    fn take(&mut self) -> Option<sled::Result<(IVec, Option<IVec>)>> {
        match self {
            Source::Layer(cursor) => {
                cursor.peek();
                cursor.chunk.pop_front().map(Ok)
            }
            Source::Sled(iter) => iter.next().map(|item| item.map(|(k, v)| (k, Some(v)))),
        }
    }
}

/// A range read over the layers and sled, newest source first.
pub(super) struct Merge {
    sources: Vec<Source>,
    rev: bool,
}

impl Iterator for Merge {
    type Item = sled::Result<(IVec, IVec)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            // The key that comes next, and the newest source holding it.
            let mut best: Option<(usize, Vec<u8>)> = None;
            for (i, source) in self.sources.iter_mut().enumerate() {
                let key = match source.peek_key() {
                    None => continue,
                    Some(Ok(key)) => key,
                    Some(Err(())) => {
                        return match source.take() {
                            Some(Err(e)) => Some(Err(e)),
                            _ => None,
                        }
                    }
                };
                let better = match &best {
                    None => true,
                    Some((_, b)) => {
                        if self.rev {
                            key > b.as_slice()
                        } else {
                            key < b.as_slice()
                        }
                    }
                };
                if better {
                    best = Some((i, key.to_vec()));
                }
            }
            let (winner, key) = best?;
            let mut found = None;
            for (i, source) in self.sources.iter_mut().enumerate() {
                if source.peek_key().and_then(Result::ok) == Some(key.as_slice()) {
                    let item = source.take();
                    if i == winner {
                        found = item;
                    }
                }
            }
            match found? {
                Ok((k, Some(v))) => return Some(Ok((k, v))),
                Ok((_, None)) => continue,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

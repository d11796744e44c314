//! Room on the disk: new work is refused before the data directory's file
//! system is full, not failed half-way once it is.
//!
//! A write the log cannot make (`ENOSPC`) ends the log for good
//! ([`super::wal`]): the file may hold a hole, and sled, out of space in
//! its own file, stops too. So, as Postfix refuses mail while its queue's
//! file system has less than `queue_minfree` left, the protocol edges ask
//! [`Space::low`] before they take anything new, and refuse with their
//! protocol's own answer (HTTP 507, SMTP `452 4.3.1`, SMPP
//! `ESME_RMSGQFUL`) while less than `min_free_mib` is free. What was
//! already taken goes on (deliveries, receipts, retention, which frees
//! room) inside that margin, and the refusals stop by themselves once
//! the space is back, without a restart.
//!
//! The free space is read with `statvfs` at most every [`CHECK_EVERY`]
//! while there is room, and on every question while there is not, so
//! freed space is seen at once; refusing starts under `min_free_mib` and
//! ends at a quarter above it, so a disk near the line does not flap.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often the free space is read while there is room.
pub const CHECK_EVERY: Duration = Duration::from_millis(100);

/// The `min_free_mib` setting's default: a log file grows to 64 MiB
/// before it is cut, and sled's file takes what the layers hold at the
/// next checkpoint, so 256 MiB leaves room for what was taken before the
/// refusals began.
pub const DEFAULT_MIN_FREE_MIB: u64 = 256;

/// The free space of one data directory's file system.
pub(super) struct Space {
    dir: PathBuf,
    /// Bytes that must stay free; 0 turns the check off.
    min_free: u64,
    /// New work is refused.
    low: AtomicBool,
    /// The last reading, for `/metrics` and the refusals' message.
    free: AtomicU64,
    /// When it was read, in nanoseconds after `epoch`.
    read_at: AtomicU64,
    epoch: Instant,
}

impl Space {
    pub(super) fn new(dir: PathBuf, min_free_mib: u64) -> Space {
        let space = Space {
            dir,
            min_free: min_free_mib.saturating_mul(1 << 20),
            low: AtomicBool::new(false),
            free: AtomicU64::new(u64::MAX),
            read_at: AtomicU64::new(0),
            epoch: Instant::now(),
        };
        // Read before anything is taken; said only if it is short already.
        space.read();
        space
    }

    pub(super) fn min_free(&self) -> u64 {
        self.min_free
    }

    /// Bytes free at the last reading (`u64::MAX` when it could not be read).
    pub(super) fn free(&self) -> u64 {
        self.free.load(Ordering::Relaxed)
    }

    /// Whether new work must be refused: less than `min_free_mib` free.
    pub(super) fn low(&self) -> bool {
        let low = self.low.load(Ordering::Relaxed);
        let now = self.epoch.elapsed().as_nanos() as u64;
        let last = self.read_at.load(Ordering::Relaxed);
        let due = now.saturating_sub(last) >= CHECK_EVERY.as_nanos() as u64;
        // One caller reads when it is due; while low, every caller does.
        if low
            || (due
                && self
                    .read_at
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok())
        {
            return self.read();
        }
        low
    }

    /// Reads the free space and decides; logs a change either way.
    fn read(&self) -> bool {
        let was_low = self.low.load(Ordering::Relaxed);
        let low = decide(was_low, self.read_free(), self.min_free());
        if low != was_low && self.low.swap(low, Ordering::Relaxed) != low {
            self.say(low);
        }
        low
    }

    /// The bytes free now, kept for [`Space::free`].
    fn read_free(&self) -> u64 {
        let free = match available(&self.dir) {
            Ok(free) => free,
            Err(e) => {
                // Unknown is not low: a file system that cannot say is
                // not refused for it (the log still fails safe).
                tracing::debug!(dir = %self.dir.display(), error = %e, "free space not readable");
                u64::MAX
            }
        };
        self.free.store(free, Ordering::Relaxed);
        free
    }

    fn say(&self, low: bool) {
        let (free_mib, min_free_mib) = (self.free() >> 20, self.min_free() >> 20);
        if low {
            tracing::warn!(dir = %self.dir.display(), free_mib, min_free_mib,
                "little free space left: new messages, mail and writes are refused until there is more");
        } else {
            tracing::info!(dir = %self.dir.display(), free_mib, "free space is back: new work is taken again");
        }
    }
}

/// Bytes free on the file system holding `dir`, to a writer without
/// root's reserved blocks.
fn available(dir: &Path) -> std::io::Result<u64> {
    let stat = rustix::fs::statvfs(dir)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// What to tell someone whose data directory could not be opened because
/// its disk is full (replaying the log and opening sled write), if that
/// is why.
pub(super) fn full_disk(dir: &Path, error: &str) -> Option<String> {
    let enospc = std::io::Error::from_raw_os_error(28).to_string();
    if !error.contains(&enospc) {
        return None;
    }
    let free = available(dir).map_or(String::new(), |free| format!(" ({} MiB free)", free >> 20));
    Some(format!(
        "the disk holding {} is full{free}; free some space and start again",
        dir.display()
    ))
}

/// Refusing starts under `min_free` and ends at a quarter above it.
fn decide(was_low: bool, free: u64, min_free: u64) -> bool {
    if min_free == 0 {
        return false;
    }
    match was_low {
        false => free < min_free,
        true => free < min_free.saturating_add(min_free / 4),
    }
}

#[cfg(test)]
mod tests {
    use super::{decide, Space};

    const MIB: u64 = 1 << 20;

    #[test]
    fn refusing_starts_under_the_minimum_and_ends_a_quarter_above_it() {
        assert!(!decide(false, 256 * MIB, 256 * MIB));
        assert!(decide(false, 256 * MIB - 1, 256 * MIB));
        assert!(decide(true, 300 * MIB, 256 * MIB));
        assert!(decide(true, 320 * MIB - 1, 256 * MIB));
        assert!(!decide(true, 320 * MIB, 256 * MIB));
        assert!(!decide(true, 0, 0), "0 turns the check off");
        assert!(!decide(false, 0, 0));
    }

    #[test]
    fn a_database_that_cannot_open_for_a_full_disk_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let enospc = std::io::Error::from_raw_os_error(28);
        let hint = super::full_disk(dir.path(), &format!("storage: IO error: {enospc}")).unwrap();
        assert!(
            hint.starts_with(&format!("the disk holding {} is full (", dir.path().display())),
            "{hint}"
        );
        assert!(hint.ends_with("MiB free); free some space and start again"), "{hint}");
        assert_eq!(
            super::full_disk(dir.path(), "storage: IO error: permission denied"),
            None
        );
    }

    #[test]
    fn the_free_space_of_a_real_directory_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let space = Space::new(dir.path().to_path_buf(), 1);
        assert!(space.free() > 0 && space.free() < u64::MAX);
        assert!(!space.low());
        // No file system has this much free.
        assert!(Space::new(dir.path().to_path_buf(), u64::MAX >> 21).low());
        assert!(!Space::new(dir.path().to_path_buf(), 0).low());
    }
}

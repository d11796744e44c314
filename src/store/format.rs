//! The data directory's format version: the file `format`, one line,
//! `otpgate data format N`.
//!
//! A build reads the formats up to its own [`CURRENT`] and refuses a
//! directory of a newer one with a line that says so, before sled or the
//! log is opened, rather than misread records whose meaning changed (as
//! PostgreSQL refuses a data directory whose `PG_VERSION` is not its own).
//! A directory without the file is either new or was written before the
//! file existed, in format 1; both get it.
//!
//! Bump [`CURRENT`] when a change makes stored data read wrongly by the
//! builds before it: a record's meaning (not an added field with a
//! default, which serde reads either way), a tree's keys, the log's
//! frames. The step that upgrades an older directory goes in [`check`].

use std::fs;
use std::io;
use std::path::Path;

use super::{sync_dir, Result, StoreError};

/// The format this build writes.
pub const CURRENT: u32 = 1;

const FILE: &str = "format";
const PREFIX: &str = "otpgate data format ";

/// Checks `dir`'s format before anything in it is opened, and marks a
/// directory without one as [`CURRENT`].
pub(super) fn check(dir: &Path) -> Result<()> {
    let path = dir.join(FILE);
    let unreadable = |why: String| StoreError::Unreadable(format!("{}: {why}", path.display()));
    let text = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return mark(dir),
        Err(e) => return Err(unreadable(format!("cannot read the data format: {e}"))),
    };
    let version = parse(&text).ok_or_else(|| {
        let shown: String = String::from_utf8_lossy(&text).chars().take(60).collect();
        unreadable(format!(
            "not an otpgate data format (expected `{PREFIX}N`, found {shown:?}); if this is \
             otpgate's data directory, the file was damaged: write `{PREFIX}{CURRENT}` into it"
        ))
    })?;
    if version > CURRENT {
        return Err(StoreError::Unreadable(format!(
            "data format {version}, written by a newer otpgate; this build reads formats up to \
             {CURRENT}: run the newer build, or start this one on another data directory (--data)"
        )));
    }
    // Every format so far is CURRENT: no older one to upgrade.
    Ok(())
}

/// The version `text` names, if it is a format line (a version from 1).
fn parse(text: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(text).ok()?;
    let version: u32 = text.trim_end().strip_prefix(PREFIX)?.parse().ok()?;
    (version >= 1).then_some(version)
}

/// Writes the file, durably (written aside, synced, renamed into place,
/// the directory synced), so that no crash leaves half a line.
fn mark(dir: &Path) -> Result<()> {
    let failed = |e: io::Error| StoreError::Log(format!("writing the data format: {e}"));
    fs::create_dir_all(dir).map_err(failed)?;
    let aside = dir.join(format!("{FILE}.new"));
    fs::write(&aside, format!("{PREFIX}{CURRENT}\n")).map_err(failed)?;
    fs::File::open(&aside).and_then(|f| f.sync_all()).map_err(failed)?;
    fs::rename(&aside, dir.join(FILE)).map_err(failed)?;
    sync_dir(dir).map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_without_the_file_is_marked_with_this_builds_format() {
        let dir = tempfile::tempdir().unwrap();
        check(dir.path()).unwrap();
        let text = fs::read_to_string(dir.path().join(FILE)).unwrap();
        assert_eq!(text, format!("otpgate data format {CURRENT}\n"));
        assert!(!dir.path().join("format.new").exists());
        check(dir.path()).unwrap();
    }

    #[test]
    fn a_newer_format_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(FILE), format!("otpgate data format {}\n", CURRENT + 1)).unwrap();
        let message = check(dir.path()).unwrap_err().to_string();
        assert_eq!(
            message,
            format!(
                "data format {}, written by a newer otpgate; this build reads formats up to \
                 {CURRENT}: run the newer build, or start this one on another data directory \
                 (--data)",
                CURRENT + 1
            )
        );
    }

    #[test]
    fn a_damaged_file_is_refused_not_overwritten() {
        for text in [
            &b""[..],
            b"otpgate data format 0\n",
            b"otpgate data format x",
            b"\xff\xfe",
            b"PG 16\n",
        ] {
            let dir = tempfile::tempdir().unwrap();
            fs::write(dir.path().join(FILE), text).unwrap();
            let message = check(dir.path()).unwrap_err().to_string();
            assert!(message.contains("not an otpgate data format"), "{text:?}: {message}");
            assert_eq!(fs::read(dir.path().join(FILE)).unwrap(), text, "left as it was");
        }
    }

    #[test]
    fn format_lines_parse_with_or_without_a_newline() {
        assert_eq!(parse(b"otpgate data format 1\n"), Some(1));
        assert_eq!(parse(b"otpgate data format 12"), Some(12));
        assert_eq!(parse(b"otpgate data format 1\r\n"), Some(1));
        assert_eq!(parse(b" otpgate data format 1"), None);
        assert_eq!(parse(b"otpgate data format -1"), None);
    }
}

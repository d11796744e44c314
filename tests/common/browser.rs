//! Debian's chromium, headless, as the console's real browser: the DOM it
//! builds from a page and a screenshot at a phone's size.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The chromium binary on `PATH`, if any.
pub fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// Runs headless chromium on `url` with `extra` flags and its own empty
/// profile; answers its standard output.
async fn run(binary: &Path, url: &str, extra: &[String]) -> String {
    let profile = tempfile::tempdir().expect("chromium profile dir");
    let mut command = tokio::process::Command::new(binary);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--no-first-run",
            "--no-default-browser-check",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(90), command.output())
        .await
        .expect("chromium finishes within 90 s")
        .expect("chromium runs");
    assert!(
        output.status.success(),
        "chromium failed on {url}: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The DOM chromium built from `url`, serialised.
pub async fn dump_dom(binary: &Path, url: &str) -> String {
    run(binary, url, &["--dump-dom".to_string()]).await
}

/// Writes a PNG screenshot of `url` at `width`×`height` CSS pixels.
pub async fn screenshot(binary: &Path, url: &str, png: &Path, width: u32, height: u32) {
    run(
        binary,
        url,
        &[
            format!("--screenshot={}", png.display()),
            format!("--window-size={width},{height}"),
            "--force-device-scale-factor=1".to_string(),
        ],
    )
    .await;
}

/// A PNG's width and height from its IHDR chunk, or `None` if `bytes` is
/// not a PNG.
pub fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    if bytes.len() < 24 || &bytes[..8] != SIGNATURE || &bytes[12..16] != b"IHDR" {
        return None;
    }
    let be = |at: usize| u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    Some((be(16), be(20)))
}

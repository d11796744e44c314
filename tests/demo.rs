//! `otpgate demo` finishes by itself, and what it prints is what the README shows.

mod common;

#[test]
fn the_demo_finishes_and_prints_what_the_readme_shows() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_otpgate"))
        .arg("demo")
        .args(common::ON_ANY_PORTS)
        .env("OTPGATE_LOG", "off")
        .output()
        .expect("run otpgate demo");
    assert!(
        out.status.success(),
        "demo failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let http = stdout
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().find_map(|p| p.strip_prefix("http=")))
        .expect("a listening line first")
        .to_string();
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for line in stdout.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let line = line.replace(&http, "127.0.0.1:8080");
        assert!(
            readme.contains(&line),
            "README.md does not show this demo line:\n{line}"
        );
    }
    assert!(stdout.contains("22471") && stdout.contains("REJECTD") && stdout.contains("550"));
}

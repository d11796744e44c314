//! The command line as users meet it: start-up refusals, and
//! `otpgate diagnose` against a running server and a data directory.

mod common;

use serde_json::json;

fn otpgate() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_otpgate"));
    c.env("OTPGATE_LOG", "off");
    c
}

/// `otpgate serve` on ports the system picks.
fn serve() -> std::process::Command {
    let mut c = otpgate();
    c.arg("serve").args(common::ON_ANY_PORTS);
    c
}

#[test]
fn a_malformed_carrier_file_stops_start_up_naming_the_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let carriers = dir.path().join("carriers");
    std::fs::create_dir(&carriers).unwrap();
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/carriers")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            std::fs::copy(&path, carriers.join(path.file_name().unwrap())).unwrap();
        }
    }
    let au = carriers.join("au.toml");
    let text = std::fs::read_to_string(&au)
        .unwrap()
        .replace("validity_hours = 72", "validity_hours = \"72\"");
    std::fs::write(&au, text).unwrap();
    let out = serve()
        .arg("--data")
        .arg(dir.path().join("data"))
        .arg("--carriers")
        .arg(&carriers)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("au.toml") && stderr.contains("validity_hours"),
        "{stderr}"
    );
}

#[test]
fn a_bad_flag_value_is_refused_before_anything_starts() {
    let out = otpgate().args(["serve", "--smpp", "not-an-address"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("smpp"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diagnose_prints_the_report_from_a_server_and_from_a_data_directory() {
    let mut server = common::BinServer::start(None).await;
    server.sms_member("M-AU", "090-3333-0003", "au").await;
    let (s, _) = server
        .put(
            "/v1/sim/handsets/090-3333-0003",
            json!({"filters": {"reject_all": true}}),
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = server
        .post("/v1/otps", json!({"member_id": "M-AU", "purpose": "login"}))
        .await;
    assert_eq!(s, 201);
    server.advance(30).await;

    let url = format!("http://{}", server.http);
    let out = otpgate()
        .args(["diagnose", "--member", "M-AU", "--lang", "en", "--server", &url])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("blocked_by_sms_filter") && text.contains("03-5460-0124"),
        "{text}"
    );

    let out = otpgate()
        .args(["diagnose", "--phone", "+81 90 3333 0003", "--json", "--server", &url])
        .output()
        .unwrap();
    assert!(out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(report["member_id"], "M-AU");
    assert_eq!(report["findings"][0]["code"], "blocked_by_sms_filter");
    assert_eq!(report["lang"], "ja", "the member's language by default");
    // The detail behind the findings: OTPs, messages with events, the handset.
    assert_eq!(report["member"]["id"], "M-AU");
    assert_eq!(
        report["otps"].as_array().map(Vec::len),
        Some(2),
        "the verification code and the OTP"
    );
    assert_eq!(report["otps"][0]["entries"][0]["result"], "verified");
    let rejected = report["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["state"] == "rejected")
        .expect("rejected");
    assert!(rejected["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["stat"] == "REJECTD"));
    assert_eq!(report["handset"]["carrier"], "au");
    assert_eq!(report["handset"]["filters"]["reject_all"], true);

    // The id the SMSC gave the rejected message finds the member too.
    let smsc_id = rejected["smsc_message_id"].as_str().expect("an SMSC id").to_string();

    // The same report straight from the data directory, with the server stopped.
    server.terminate().await;
    let data = server.dir.path().join("data");
    let out = otpgate()
        .args(["diagnose", "--member", "M-AU", "--json", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let offline: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(offline["findings"][0]["code"], "blocked_by_sms_filter");
    assert_eq!(offline["findings"][0]["title"], report["findings"][0]["title"]);
    let out = otpgate()
        .args(["diagnose", "--message-id", &smsc_id, "--json", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let by_id: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(by_id["member_id"], "M-AU");

    let out = otpgate()
        .args(["diagnose", "--member", "NOBODY", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
}

/// A data directory written by a newer otpgate (a newer data format) is
/// refused before anything in it is opened, with what to do.
#[test]
fn a_data_directory_of_a_newer_format_is_refused_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("format"), "otpgate data format 2\n").unwrap();
    let out = serve().arg("--data").arg(&data).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("data format 2, written by a newer otpgate; this build reads formats up to 1"),
        "{stderr}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"));
    assert!(!data.join("db").exists(), "nothing opened: {stderr}");
}

/// A write-ahead log damaged before writes it acknowledged (a byte of the
/// newest log file's first frame flipped, its later frames sound) is
/// refused at start-up, naming the file and what to do, rather than
/// replayed up to the damage and started without what came after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_ahead_log_damaged_before_acknowledged_writes_is_refused_at_start_up() {
    let mut server = common::BinServer::start(None).await;
    for i in 0..10 {
        server
            .handset(&format!("0902222{i:04}"), json!({"carrier": "docomo"}))
            .await;
    }
    let mut child = server.child.take().expect("running");
    child.kill().await.expect("SIGKILL");
    let data = server.dir.path().join("data");
    let newest = std::fs::read_dir(data.join("wal"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "log"))
        .max()
        .expect("a log file");
    let number: u64 = newest.file_stem().unwrap().to_str().unwrap().parse().unwrap();
    let mut bytes = std::fs::read(&newest).unwrap();
    // Frames start on 4 KiB pages with their length and file number.
    let frames: Vec<usize> = (0..bytes.len())
        .step_by(4096)
        .filter(|&at| bytes.get(at + 4..at + 12) == Some(&number.to_le_bytes()[..]))
        .collect();
    assert!(
        frames.len() >= 2,
        "acknowledged writes in {}: {frames:?}",
        newest.display()
    );
    bytes[frames[0] + 16 + 3] ^= 0xff;
    std::fs::write(&newest, &bytes).unwrap();

    let mut again = tokio::process::Command::new(env!("CARGO_BIN_EXE_otpgate"));
    again
        .env("OTPGATE_LOG", "off")
        .arg("serve")
        .args(common::ON_ANY_PORTS)
        .arg("--data")
        .arg(&data)
        .kill_on_drop(true);
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), again.output())
        .await
        .expect("refused, not started")
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = newest.file_name().unwrap().to_string_lossy().to_string();
    assert!(
        stderr.contains(&format!("{file} is damaged at byte {}", frames[0])),
        "{stderr}"
    );
    assert!(stderr.contains("Restore the data directory from a copy"), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"));
}

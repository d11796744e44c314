//! Every scenario in fixtures/scenarios/ runs and passes; a deliberately
//! failing one makes `otpgate run` exit non-zero with valid JUnit XML.

use std::path::Path;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_in_the_library_passes() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/scenarios");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixtures/scenarios")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    let mut failures = Vec::new();
    for file in &files {
        let scenario = otpgate::scenario::load(file).unwrap_or_else(|e| panic!("{e}"));
        let result = otpgate::cli::run_in_process(&file.display().to_string(), &scenario)
            .await
            .expect("server starts");
        if !result.passed() {
            failures.push(otpgate::scenario::runner::render(&result));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} scenarios failed:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

fn well_formed(xml: &str) -> Result<usize, String> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut failures = 0;
    loop {
        match reader.read_event() {
            Ok(quick_xml::events::Event::Eof) => return Ok(failures),
            Ok(quick_xml::events::Event::Start(e)) | Ok(quick_xml::events::Event::Empty(e))
                if e.name().as_ref() == b"failure" =>
            {
                failures += 1
            }
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

#[test]
fn a_failing_scenario_exits_non_zero_with_valid_junit() {
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("report.xml");
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/scenarios/failing/deliberately-failing.toml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_otpgate"))
        .arg("run")
        .arg(&file)
        .arg("--junit")
        .arg(&junit)
        .output()
        .expect("run otpgate");
    assert!(!out.status.success(), "exit status {:?}", out.status);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("FAIL") && stdout.contains("0 passed, 1 failed"),
        "{stdout}"
    );
    let xml = std::fs::read_to_string(&junit).expect("junit written");
    assert_eq!(well_formed(&xml), Ok(1), "{xml}");
    assert!(xml.contains("22471"), "{xml}");
}

#[test]
fn an_invalid_scenario_is_refused_with_the_line_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "name = \"bad\"\n\n[[steps]]\nteleport = 3\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_otpgate"))
        .arg("run")
        .arg(&file)
        .output()
        .expect("run otpgate");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 4") && stderr.contains("teleport"), "{stderr}");
}

//! The shared pieces of the integration tests: a real server on port 0 with
//! a fresh data directory and the virtual clock, and an HTTP client that is
//! not otpgate's code.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

use otpgate::app::Running;
use otpgate::config::{Config, Overrides};

/// An in-process server.
pub struct TestServer {
    pub running: Option<Running>,
    pub dir: tempfile::TempDir,
    pub api: Api,
    pub smpp: SocketAddr,
    pub smtp: SocketAddr,
}

impl std::ops::Deref for TestServer {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

/// The HTTP side of a server under test.
pub struct Api {
    pub http: SocketAddr,
}

pub fn config_for(dir: &Path, seed: u64) -> Config {
    let mut c = Config::load(Overrides {
        http: Some("127.0.0.1:0".into()),
        smpp: Some("127.0.0.1:0".into()),
        smtp: Some("127.0.0.1:0".into()),
        data: Some(dir.to_path_buf()),
        virtual_clock: true,
        seed: Some(seed),
        ..Overrides::default()
    })
    .expect("test config");
    c.load_demo = false;
    c
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    /// A server with one more SMSC account, as a QA team's own
    /// application has (the default one, `otpgate`, shares its name with
    /// the OTP core's origin in the delivery log).
    pub async fn start_with_account(system_id: &str, password: &str) -> TestServer {
        TestServer::start_with(|c| {
            c.smsc.accounts.push(otpgate::config::SmscAccount {
                system_id: system_id.into(),
                password: password.into(),
                throughput_per_sec: None,
                window: None,
            })
        })
        .await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = config_for(dir.path(), 7);
        adjust(&mut config);
        let running = otpgate::app::start(config).await.expect("server starts");
        TestServer {
            api: Api { http: running.http },
            smpp: running.smpp.expect("smpp on"),
            smtp: running.smtp.expect("smtp on"),
            running: Some(running),
            dir,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
    }
}

/// The real binary in a child process, as a user starts it.
pub struct BinServer {
    pub child: Option<tokio::process::Child>,
    pub dir: tempfile::TempDir,
    pub api: Api,
    pub smpp: SocketAddr,
    pub smtp: SocketAddr,
    extra: Vec<String>,
}

impl std::ops::Deref for BinServer {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

/// Every listener of `otpgate serve` on a port the system picks.
pub const ON_ANY_PORTS: [&str; 6] = [
    "--http",
    "127.0.0.1:0",
    "--smpp",
    "127.0.0.1:0",
    "--smtp",
    "127.0.0.1:0",
];

async fn spawn_binary(dir: &Path, extra: &[String]) -> (tokio::process::Child, SocketAddr, SocketAddr, SocketAddr) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_otpgate"))
        .arg("serve")
        .args(ON_ANY_PORTS)
        .args(["--virtual-clock", "--seed", "7"])
        .arg("--data")
        .arg(dir)
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn otpgate");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.starts_with("otpgate listening ") {
                return line;
            }
        }
        panic!("otpgate exited without a listening line");
    })
    .await
    .expect("listening line in time");
    let addr = |key: &str| -> SocketAddr {
        line.split_whitespace()
            .find_map(|part| part.strip_prefix(&format!("{key}=")))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no {key}= in {line}"))
    };
    let (http, smpp, smtp) = (addr("http"), addr("smpp"), addr("smtp"));
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, http, smpp, smtp)
}

impl BinServer {
    pub async fn start(config: Option<&str>) -> BinServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut extra = Vec::new();
        if let Some(text) = config {
            let path = dir.path().join("otpgate.toml");
            std::fs::write(&path, text).expect("write config");
            extra = vec!["--config".to_string(), path.display().to_string()];
        }
        let data = dir.path().join("data");
        let (child, http, smpp, smtp) = spawn_binary(&data, &extra).await;
        BinServer {
            child: Some(child),
            dir,
            api: Api { http },
            smpp,
            smtp,
            extra,
        }
    }

    /// SIGTERM, wait for a clean exit, then start again on the same data.
    pub async fn restart(&mut self) {
        self.terminate().await;
        let (child, http, smpp, smtp) = spawn_binary(&self.dir.path().join("data"), &self.extra).await;
        self.child = Some(child);
        self.api = Api { http };
        self.smpp = smpp;
        self.smtp = smtp;
    }

    /// SIGKILL, then start again on the same data: a crash.
    pub async fn crash_and_restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("SIGKILL");
        }
        let (child, http, smpp, smtp) = spawn_binary(&self.dir.path().join("data"), &self.extra).await;
        self.child = Some(child);
        self.api = Api { http };
        self.smpp = smpp;
        self.smtp = smtp;
    }

    /// Sends SIGTERM and asserts a clean exit.
    pub async fn terminate(&mut self) {
        if let Some(child) = self.child.take() {
            terminate(child).await;
        }
    }

    pub async fn stop(mut self) {
        self.terminate().await;
    }
}

impl Api {
    pub async fn http(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let raw = body.map(|b| b.to_string());
        self.http_raw(method, path, raw.as_deref()).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.http("GET", path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.http("POST", path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.http("PUT", path, Some(body)).await
    }

    /// One request on a fresh connection with hyper's client.
    pub async fn http_raw(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let stream = tokio::net::TcpStream::connect(self.http).await.expect("connect http");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "otpgate")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or("").to_string())))
            .expect("request");
        let resp = sender.send_request(req).await.expect("response");
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let value =
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, value)
    }

    /// `/metrics`, read as Prometheus text: each series by its name and
    /// labels as written (`otpgate_smtp_refused_total{reason="busy"}`).
    pub async fn metrics(&self) -> Metrics {
        let (status, body) = self.get("/metrics").await;
        assert_eq!(status, 200, "/metrics: {body}");
        let text = body
            .as_str()
            .unwrap_or_else(|| panic!("/metrics as text: {body}"))
            .to_string();
        let series = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .filter_map(|(name, value)| Some((name.to_string(), value.parse().ok()?)))
            .collect();
        Metrics { series, text }
    }

    /// Returns once `n` long polls wait on the server (`/metrics`), so
    /// that what the test does next happens while they wait.
    pub async fn long_polls_waiting(&self, n: u64) {
        self.gauge_reads("otpgate_http_long_polls_waiting", n, || async {})
            .await;
    }

    /// Returns once the gauge `name` of `/metrics` reads `n`, doing
    /// `meanwhile` between two reads (what makes the server notice).
    pub async fn gauge_reads<F: std::future::Future<Output = ()>>(
        &self,
        name: &str,
        n: u64,
        meanwhile: impl Fn() -> F,
    ) {
        let reading = async {
            while self.metrics().await.value(name) != n as f64 {
                meanwhile().await;
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), reading)
            .await
            .unwrap_or_else(|_| panic!("{name} never read {n}"));
    }

    pub async fn advance(&self, seconds: u64) {
        let (status, body) = self.post("/v1/sim/clock/advance", json!({ "seconds": seconds })).await;
        assert_eq!(status, 200, "advance: {body}");
    }

    /// The newest code on a handset, advancing the clock until one newer than `after` arrives.
    pub async fn code_on_handset(&self, number: &str, after: Option<&Value>) -> Value {
        for _ in 0..60 {
            let (status, body) = self.get(&format!("/v1/sim/handsets/{}/otp", enc(number))).await;
            if status == 200 && Some(&body["received_at"]) != after.map(|a| &a["received_at"]) {
                return body;
            }
            self.advance(5).await;
        }
        panic!("no new code reached {number}");
    }

    /// Creates a handset and a member, then runs the four registration steps.
    pub async fn sms_member(&self, id: &str, number: &str, carrier: &str) -> Value {
        let (s, b) = self
            .put(
                &format!("/v1/sim/handsets/{}", enc(number)),
                json!({ "carrier": carrier }),
            )
            .await;
        assert!(s == 200 || s == 201, "handset: {s} {b}");
        let (s, b) = self
            .post("/v1/members", json!({"id": id, "locale": "ja", "residence": "JP", "email": format!("{}@example.com", id.to_lowercase())}))
            .await;
        assert_eq!(s, 201, "member: {b}");
        let (s, b) = self
            .post(&format!("/v1/members/{id}/phone"), json!({ "number": number }))
            .await;
        assert_eq!(s, 202, "register phone: {b}");
        let code = self.code_on_handset(number, None).await;
        let (s, b) = self
            .post(
                &format!("/v1/members/{id}/phone/verify"),
                json!({ "code": code["code"] }),
            )
            .await;
        assert_eq!(s, 200, "verify phone: {b}");
        let (s, b) = self
            .put(&format!("/v1/members/{id}/notification"), json!({ "channel": "sms" }))
            .await;
        assert_eq!(s, 200, "notification: {b}");
        // Past the 60 s cooldown that the verification SMS started.
        self.advance(61).await;
        code
    }
}

/// One reading of `/metrics`.
pub struct Metrics {
    series: std::collections::BTreeMap<String, f64>,
    text: String,
}

impl Metrics {
    /// A series' value, or `None` when the server does not export it.
    pub fn get(&self, series: &str) -> Option<f64> {
        self.series.get(series).copied()
    }

    /// A series' value; a series missing fails the test, showing the text.
    pub fn value(&self, series: &str) -> f64 {
        self.get(series)
            .unwrap_or_else(|| panic!("no {series} in /metrics:\n{}", self.text))
    }
}

/// Percent-encodes a path segment.
pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}
/// Sends `kill -NAME` (`TERM`, `STOP`) to a running child.
pub fn signal(child: &tokio::process::Child, name: &str) {
    let pid = child.id().expect("a running child has a pid").to_string();
    let sent = std::process::Command::new("kill")
        .args([format!("-{name}"), pid.clone()])
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill -{name} {pid}");
}

/// SIGTERM, and a clean exit within 20 s.
pub async fn terminate(mut child: tokio::process::Child) {
    signal(&child, "TERM");
    let exit = tokio::time::timeout(std::time::Duration::from_secs(20), child.wait())
        .await
        .expect("exits after SIGTERM")
        .expect("wait");
    assert!(exit.success(), "otpgate exited with {exit}");
}

pub mod browser;
pub mod child;
pub mod esme;
pub mod fuzzing;
pub mod handsets;
pub mod hooks;
pub mod pages;
pub mod raw_http;
pub mod smtp_client;
pub mod tls;

//! The real binary in a child process for the reliability tests: unlike
//! [`super::BinServer`] it can be killed with SIGKILL, keeps its standard
//! error in a file (searched for plain codes), takes any flags and
//! environment, and its HTTP client never panics, because a request may
//! meet a server that was just killed.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use tokio::io::AsyncBufReadExt;

use super::Api;

/// How long a start may take before the test calls it stuck (a debug build
/// replaying a large sled log on a loaded machine is slow).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// An `otpgate serve` child process and the addresses it printed.
pub struct ChildServer {
    pub child: Option<tokio::process::Child>,
    pub data: PathBuf,
    /// Standard error of every run, appended.
    pub log: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub http: SocketAddr,
    pub smpp: Option<SocketAddr>,
    pub smtp: Option<SocketAddr>,
    /// How many times it was started.
    pub starts: u32,
}

impl ChildServer {
    /// `otpgate serve --data DATA ARGS...` with `ENV`; standard error goes to
    /// `log`. The listeners default to port 0 unless `args` name them.
    pub async fn start(data: &Path, log: &Path, args: &[&str], env: &[(&str, &str)]) -> ChildServer {
        let mut server = ChildServer {
            child: None,
            data: data.to_path_buf(),
            log: log.to_path_buf(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            http: "127.0.0.1:0".parse().expect("addr"),
            smpp: None,
            smtp: None,
            starts: 0,
        };
        server.spawn().await;
        server
    }

    pub fn api(&self) -> Api {
        Api { http: self.http }
    }

    async fn spawn(&mut self) {
        let mut args: Vec<String> = vec!["serve".into()];
        for flag in ["--http", "--smpp", "--smtp"] {
            if !self.args.iter().any(|a| a == flag) {
                args.extend([flag.to_string(), "127.0.0.1:0".to_string()]);
            }
        }
        args.extend(self.args.iter().cloned());
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the server log");
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_otpgate"))
            .args(&args)
            .arg("--data")
            .arg(&self.data)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn otpgate");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(START_TIMEOUT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.starts_with("otpgate listening ") {
                    return Some(line);
                }
            }
            None
        })
        .await;
        let line = match line {
            Ok(Some(line)) => line,
            Ok(None) => panic!(
                "otpgate exited without a listening line (start {}); its log:\n{}",
                self.starts + 1,
                tail(&self.log, 40)
            ),
            Err(_) => panic!(
                "otpgate printed no listening line within {START_TIMEOUT:?}; its log:\n{}",
                tail(&self.log, 40)
            ),
        };
        let addr = |key: &str| -> Option<SocketAddr> {
            line.split_whitespace()
                .find_map(|part| part.strip_prefix(&format!("{key}=")))
                .and_then(|a| a.parse().ok())
        };
        self.http = addr("http").unwrap_or_else(|| panic!("no http= in {line}"));
        self.smpp = addr("smpp");
        self.smtp = addr("smtp");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.child = Some(child);
        self.starts += 1;
    }

    /// SIGKILL: no goodbye, no flush, no unbind.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.start_kill().expect("SIGKILL");
            let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
                .await
                .expect("a killed child is reaped")
                .expect("wait");
            assert!(!status.success(), "a SIGKILLed server cannot exit cleanly");
        }
    }

    /// SIGSTOP: the server stops where it is, mid-write or mid-sync, and
    /// sends nothing more (a power cut's first half; `kill` is the second).
    pub fn freeze(&self) {
        super::signal(self.child.as_ref().expect("a running server"), "STOP");
    }

    /// SIGTERM, and a clean exit within 20 s.
    pub async fn terminate(&mut self) {
        if let Some(child) = self.child.take() {
            super::terminate(child).await;
        }
    }

    /// Starts again on the same data directory (after `kill` or `terminate`).
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the server before restarting it");
        self.spawn().await;
    }

    /// The whole standard error so far.
    pub fn log_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }
}

/// The last `n` lines of a file, for failure messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(n)..].join("\n");
    // A panic's message comes before its backtrace, which can be longer
    // than the tail: say it first.
    match lines.iter().position(|l| l.contains("panicked at")) {
        Some(at) if at < lines.len().saturating_sub(n) => {
            let message = lines[at..(at + 3).min(lines.len())].join("\n");
            format!("{message}\n  ...\n{tail}")
        }
        _ => tail,
    }
}

/// One HTTP request that may fail: the server may be dead or dying.
/// `Err` says why no full answer arrived.
pub async fn try_http(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> Result<(u16, Value), String> {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "otpgate")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or("").to_string())))
            .map_err(|e| format!("request: {e}"))?;
        let resp = sender.send_request(req).await.map_err(|e| format!("send: {e}"))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok((status, value))
    };
    match tokio::time::timeout(Duration::from_secs(30), exchange).await {
        Ok(result) => result,
        Err(_) => Err("no answer within 30 s".into()),
    }
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

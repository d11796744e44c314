//! The servers under test run as child processes of the harness: the
//! release `otpgate serve` binary, and the baselines (this same program
//! started again with the hidden `baseline` subcommand). Each child's peak
//! memory is its `VmHWM` in `/proc/PID/status`, and its CPU time comes from
//! `/proc/PID/stat`, so both sides are measured the same way.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A started server and the addresses it printed.
pub struct Server {
    child: Child,
    pid: u32,
    pub http: Option<SocketAddr>,
    pub smpp: Option<SocketAddr>,
    pub smtp: Option<SocketAddr>,
}

/// What a server used during a run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// Peak resident memory (VmHWM), KiB.
    pub peak_rss_kib: u64,
    /// CPU time (user + system) in seconds.
    pub cpu_seconds: f64,
}

impl Server {
    /// `otpgate serve` on port 0 everywhere with `config`, its data in `data`.
    pub async fn otpgate(bin: &Path, data: &Path, config: &Path) -> Server {
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .args([
                "--http",
                "127.0.0.1:0",
                "--smpp",
                "127.0.0.1:0",
                "--smtp",
                "127.0.0.1:0",
            ])
            .arg("--data")
            .arg(data)
            .arg("--config")
            .arg(config);
        Server::start(cmd, &data.with_extension("log")).await
    }

    /// This program again, serving the named baseline.
    pub async fn baseline(kind: &str, log: &Path) -> Server {
        let exe = std::env::current_exe().expect("the harness knows its own path");
        let mut cmd = Command::new(exe);
        cmd.args(["baseline", kind]);
        Server::start(cmd, log).await
    }

    async fn start(mut cmd: Command, log: &Path) -> Server {
        let stderr = std::fs::File::create(log).expect("create the server log");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("start the server");
        let pid = child.id().expect("a running child has a pid");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("the server printed its listening line within 60 s")
            .expect("read the server's stdout")
            .unwrap_or_else(|| panic!("the server exited before listening; see {}", log.display()));
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let addr = |key: &str| -> Option<SocketAddr> {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .and_then(|a| a.parse().ok())
        };
        Server {
            pid,
            http: addr("http="),
            smpp: addr("smpp="),
            smtp: addr("smtp="),
            child,
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn usage(&self) -> Usage {
        usage_of(self.pid)
    }

    /// SIGTERM, then SIGKILL if it has not gone within 15 s; answers the
    /// usage read just before the signal.
    pub async fn stop(mut self) -> Usage {
        let usage = self.usage();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        if tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
        usage
    }
}

pub fn usage_of(pid: u32) -> Usage {
    Usage {
        peak_rss_kib: status_kib(pid, "VmHWM:"),
        cpu_seconds: cpu_seconds(pid),
    }
}

fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// utime + stime of a process, in seconds (clock ticks of 100 Hz, as on
/// every Linux the harness is meant for).
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// The harness's own peak memory (for the in-process durability workload).
pub fn own_usage() -> Usage {
    usage_of(std::process::id())
}

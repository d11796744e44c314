//! HTTP/1.1 spoken by hand over a TcpStream, for what hyper's client hides:
//! a request held mid-body, `Expect: 100-continue`, the headers of an
//! answer, and whether the server closed the connection after it.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// How long a test waits for an answer before calling the server stuck.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

/// One answer: status, headers (names lowercased) and the body as JSON.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn error_code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

/// A kept-open connection.
pub struct RawHttp {
    stream: BufReader<TcpStream>,
}

impl RawHttp {
    pub async fn connect(addr: SocketAddr) -> RawHttp {
        let stream = TcpStream::connect(addr).await.expect("connect http");
        RawHttp {
            stream: BufReader::new(stream),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.get_mut().write_all(bytes).await.expect("write");
    }

    /// A whole request with its body, in one write, and the answer.
    pub async fn call(&mut self, method: &str, path: &str, body: Option<&str>) -> Answer {
        let body = body.unwrap_or("");
        let mut request = request_head(method, path, body.len(), false);
        request.extend_from_slice(body.as_bytes());
        self.send(&request).await;
        self.answer().await
    }

    /// Reads one answer (a `100 Continue` counts as one, with no body).
    pub async fn answer(&mut self) -> Answer {
        tokio::time::timeout(ANSWER_TIMEOUT, self.read_answer())
            .await
            .expect("an answer in time")
    }

    async fn read_answer(&mut self) -> Answer {
        let mut line = String::new();
        self.stream.read_line(&mut line).await.expect("read status line");
        assert!(line.starts_with("HTTP/1.1 "), "not a status line: {line:?}");
        let status: u16 = line[9..12].parse().expect("a status code");
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.stream.read_line(&mut line).await.expect("read header");
            let header = line.trim_end_matches(['\r', '\n']);
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').expect("a header line");
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map_or(0, |(_, v)| v.parse().expect("a content length"));
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).await.expect("read body");
        let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
        Answer { status, headers, body }
    }

    /// True once the server has closed the connection (reads end).
    pub async fn closed_by_server(&mut self) -> bool {
        let mut rest = Vec::new();
        matches!(
            tokio::time::timeout(ANSWER_TIMEOUT, self.stream.read_to_end(&mut rest)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

/// A request head for a JSON body of `length` bytes.
pub fn request_head(method: &str, path: &str, length: usize, expect_continue: bool) -> Vec<u8> {
    let expect = if expect_continue {
        "Expect: 100-continue\r\n"
    } else {
        ""
    };
    format!(
        "{method} {path} HTTP/1.1\r\nHost: otpgate\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n{expect}\r\n"
    )
    .into_bytes()
}

//! A raw SMTP client written for the tests: plain tokio sockets and
//! hand-typed commands, sharing no code with otpgate, so that what the server
//! answers is checked byte for byte as any other client would see it.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// How long the tests wait for one reply before calling the server stuck.
const REPLY_TIMEOUT: Duration = Duration::from_secs(20);

/// One SMTP reply: the code and every line of text, continuation markers
/// removed.
#[derive(Debug, Clone)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    /// The enhanced status code of the first line, e.g. `5.1.1`.
    pub fn enhanced(&self) -> &str {
        let first = self.lines.first().map(String::as_str).unwrap_or("");
        match first.split_whitespace().next() {
            Some(word) if word.split('.').count() == 3 && word.chars().all(|c| c.is_ascii_digit() || c == '.') => word,
            _ => "",
        }
    }

    pub fn text(&self) -> String {
        self.lines.join("\n")
    }

    /// Whether the EHLO answer lists `keyword`.
    pub fn has_extension(&self, keyword: &str) -> bool {
        self.lines.iter().any(|l| {
            l.split_whitespace()
                .next()
                .is_some_and(|w| w.eq_ignore_ascii_case(keyword))
        })
    }
}

/// A connection that speaks SMTP by hand.
pub struct RawSmtp {
    reader: BufReader<Box<dyn AsyncRead + Unpin + Send>>,
    writer: Box<dyn AsyncWrite + Unpin + Send>,
    pub greeting: Reply,
}

impl RawSmtp {
    pub async fn connect(addr: SocketAddr) -> RawSmtp {
        let stream = TcpStream::connect(addr).await.expect("connect smtp");
        RawSmtp::over(stream).await
    }

    /// A client on any stream (a TLS one, say), after reading its `220`.
    pub async fn over<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(stream: S) -> RawSmtp {
        let (read, writer) = tokio::io::split(stream);
        let mut client = RawSmtp {
            reader: BufReader::new(Box::new(read)),
            writer: Box::new(writer),
            greeting: Reply {
                code: 0,
                lines: Vec::new(),
            },
        };
        client.greeting = client.reply().await;
        assert_eq!(client.greeting.code, 220, "greeting: {:?}", client.greeting);
        client
    }

    /// Reads one (possibly multi-line) reply.
    pub async fn reply(&mut self) -> Reply {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let read = tokio::time::timeout(REPLY_TIMEOUT, self.reader.read_line(&mut line))
                .await
                .expect("a reply in time")
                .expect("read reply");
            assert!(read > 0, "the server closed the connection; so far {lines:?}");
            let line = line.trim_end_matches(['\r', '\n']);
            assert!(line.len() >= 3, "not an SMTP reply line: {line:?}");
            let code: u16 = line[..3]
                .parse()
                .unwrap_or_else(|_| panic!("not an SMTP reply: {line:?}"));
            let more = line.as_bytes().get(3) == Some(&b'-');
            lines.push(line.get(4..).unwrap_or("").to_string());
            if !more {
                return Reply { code, lines };
            }
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.expect("write");
    }

    /// Sends one command line and reads the reply.
    pub async fn cmd(&mut self, line: &str) -> Reply {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// Sends a command and insists on the reply code.
    pub async fn expect(&mut self, line: &str, code: u16) -> Reply {
        let reply = self.cmd(line).await;
        assert_eq!(reply.code, code, "{line} -> {reply:?}");
        reply
    }

    /// The message body after `354`: dot-stuffed, CRLF line endings, ended by
    /// the lone dot. Returns the reply to the end of data.
    pub async fn data_body(&mut self, message: &[u8]) -> Reply {
        let mut out = Vec::with_capacity(message.len() + 16);
        for line in message.split_inclusive(|&b| b == b'\n') {
            let bare = line.strip_suffix(b"\n").unwrap_or(line);
            let bare = bare.strip_suffix(b"\r").unwrap_or(bare);
            if bare.first() == Some(&b'.') {
                out.push(b'.');
            }
            out.extend_from_slice(bare);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        self.send(&out).await;
        self.reply().await
    }

    /// EHLO, MAIL, each RCPT, DATA: the replies of the whole transaction,
    /// stopping at the first refusal of MAIL or DATA. A refused recipient
    /// does not stop it while another one was taken.
    pub async fn transaction(&mut self, from: &str, to: &[&str], message: &[u8]) -> Transaction {
        let ehlo = self.cmd("EHLO tester.example").await;
        assert_eq!(ehlo.code, 250, "EHLO: {ehlo:?}");
        let mail = self.cmd(&format!("MAIL FROM:<{from}>")).await;
        let mut tx = Transaction {
            mail: mail.clone(),
            rcpts: Vec::new(),
            data: None,
            end: None,
        };
        if mail.code != 250 {
            return tx;
        }
        for rcpt in to {
            tx.rcpts.push(self.cmd(&format!("RCPT TO:<{rcpt}>")).await);
        }
        let data = self.cmd("DATA").await;
        let go = data.code == 354;
        tx.data = Some(data);
        if go {
            tx.end = Some(self.data_body(message).await);
        }
        tx
    }

    pub async fn quit(mut self) {
        let bye = self.cmd("QUIT").await;
        assert_eq!(bye.code, 221, "QUIT: {bye:?}");
    }
}

/// The replies of one mail transaction.
#[derive(Debug, Clone)]
pub struct Transaction {
    pub mail: Reply,
    pub rcpts: Vec<Reply>,
    /// The reply to DATA itself (354, or a refusal when no RCPT was taken).
    pub data: Option<Reply>,
    /// The reply after the final dot.
    pub end: Option<Reply>,
}

impl Transaction {
    /// The code and enhanced code of the first refusal, or of the final
    /// reply when nothing was refused; with the stage it came at.
    pub fn outcome(&self) -> (&'static str, u16, String) {
        if self.mail.code != 250 {
            return ("mail", self.mail.code, self.mail.enhanced().to_string());
        }
        if let Some(r) = self.rcpts.iter().find(|r| r.code != 250) {
            return ("rcpt", r.code, r.enhanced().to_string());
        }
        if let Some(d) = self.data.as_ref().filter(|d| d.code != 354) {
            return ("data", d.code, d.enhanced().to_string());
        }
        match &self.end {
            Some(end) => ("end", end.code, end.enhanced().to_string()),
            None => ("none", 0, String::new()),
        }
    }

    /// The capture id from `250 2.0.0 Ok: queued as <id>`.
    pub fn queued_id(&self) -> Option<String> {
        let end = self.end.as_ref().filter(|e| e.code == 250)?;
        end.text().split("queued as ").nth(1).map(|s| s.trim().to_string())
    }
}

/// A short plain-text message with the headers most clients write.
pub fn plain_message(from: &str, to: &str, subject: &str, body: &str) -> Vec<u8> {
    format!(
        "From: {from}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: Thu, 01 Jan 2026 09:00:00 +0900\r\n\
         Message-ID: <{}@tester.example>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\r\n{body}\r\n",
        subject.len() * 7919 + body.len()
    )
    .into_bytes()
}

/// Encodes text made of ASCII and hiragana as ISO-2022-JP (JIS X 0208 row 4
/// holds the hiragana in Unicode order), the way Japanese mail clients
/// still write mail for carrier addresses.
pub fn iso_2022_jp(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut in_jis = false;
    for c in text.chars() {
        let cp = c as u32;
        if (0x3041..=0x3093).contains(&cp) {
            if !in_jis {
                out.extend_from_slice(b"\x1b$B");
                in_jis = true;
            }
            out.extend_from_slice(&[0x24, (0x21 + cp - 0x3041) as u8]);
        } else {
            assert!(c.is_ascii(), "only ASCII and hiragana: {c:?}");
            if in_jis {
                out.extend_from_slice(b"\x1b(B");
                in_jis = false;
            }
            out.push(c as u8);
        }
    }
    if in_jis {
        out.extend_from_slice(b"\x1b(B");
    }
    out
}

/// Base64 without padding tricks, for the encoded-word in a test header.
pub fn base64(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
